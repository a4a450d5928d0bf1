import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Db } from '../storage/db.ts';
import { CredentialStore, VEND_STEPS, type VendStep } from '../storage/credentials.ts';
import type { Sim } from '../storage/sims.ts';
import type { AuditLog } from '../storage/audit.ts';
import type { KeyCipher } from './key-cipher.ts';
import { generateKeyAndCsr, type KeyAlgorithm } from './keys.ts';
import type { VendingProvider } from './provider.ts';
import { arnScope, policyDocument } from './policy.ts';

export interface DeviceCredentials {
  thingName: string;
  certificateId: string;
  certificatePem: string;
  privateKeyPem: string;
}

export interface VendorOptions {
  db: Db;
  provider: VendingProvider;
  cipher: KeyCipher;
  audit: AuditLog;
  log: Logger;
  keyAlgorithm: KeyAlgorithm;
  /** Policy name and the upstream topic templates of a SIM's group. */
  policyFor(group: string): { name: string; topicTemplates: string[] };
  retryDelayMs: number;
  retryMaxDelayMs: number;
  onVended?(seconds: number): void;
  onFailure?(err: Error): void;
}

const LEASE_MS = 60_000;

function ownerIsDead(owner: string): boolean {
  const [host, pid] = owner.split('/');
  if (host !== hostname() || !pid) return false;
  try {
    process.kill(Number(pid), 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Certificate vending as a state machine recorded in SQLite: each completed step is committed before
 * the next begins, so a restart resumes where it stopped. The private key is sealed and stored before
 * the CSR leaves the process.
 */
export class Vendor {
  private readonly store: CredentialStore;
  private readonly running = new Map<string, Promise<DeviceCredentials>>();
  /** host/pid/nonce: lets another process on this host see that a lease holder has died. */
  private readonly owner = `${hostname()}/${process.pid}/${randomUUID()}`;
  private stopped = false;

  constructor(private readonly opts: VendorOptions) {
    this.store = new CredentialStore(opts.db);
  }

  /** Credentials of a SIM whose vending completed, else undefined. */
  ready(imsi: string): DeviceCredentials | undefined {
    const row = this.store.get(imsi);
    if (!row || row.step !== 'ready') return undefined;
    return {
      thingName: row.thingName,
      certificateId: row.certId!,
      certificatePem: row.certPem!,
      privateKeyPem: this.opts.cipher.decrypt(row.keyEnc, imsi).toString('utf8'),
    };
  }

  /** Vends the SIM (once, however many callers ask at the same time), retrying until it succeeds or stop(). */
  ensure(sim: Sim): Promise<DeviceCredentials> {
    const done = this.ready(sim.imsi);
    if (done) return Promise.resolve(done);
    let p = this.running.get(sim.imsi);
    if (!p) {
      p = this.vendWithRetries(sim).finally(() => this.running.delete(sim.imsi));
      this.running.set(sim.imsi, p);
    }
    return p;
  }

  stop(): void {
    this.stopped = true;
  }

  private async vendWithRetries(sim: Sim): Promise<DeviceCredentials> {
    let delay = this.opts.retryDelayMs;
    for (;;) {
      if (this.stopped) throw new Error('vending stopped');
      try {
        const started = Date.now();
        const creds = await this.vend(sim);
        if (creds) {
          this.opts.onVended?.((Date.now() - started) / 1000);
          return creds;
        }
        // Another process holds the lease: wait for it to finish.
      } catch (err) {
        const message = (err as Error).message ?? String(err);
        this.store.recordFailure(sim.imsi, message);
        this.opts.onFailure?.(err as Error);
        this.opts.log.warn({ thing: sim.thingName, err: message }, 'vending step failed; will retry');
      }
      // Full jitter keeps many SIMs retrying after an outage from moving in lockstep.
      await new Promise((r) => setTimeout(r, Math.random() * delay).unref());
      delay = Math.min(delay * 2, this.opts.retryMaxDelayMs);
    }
  }

  /** Runs the remaining steps; undefined when another process is vending this SIM. */
  private async vend(sim: Sim): Promise<DeviceCredentials | undefined> {
    const { provider, cipher } = this.opts;
    if (!this.store.get(sim.imsi)) {
      const { privateKeyPem, csrPem } = await generateKeyAndCsr(sim.thingName, this.opts.keyAlgorithm);
      const keyEnc = cipher.encrypt(Buffer.from(privateKeyPem), sim.imsi);
      this.store.createKey({ imsi: sim.imsi, thingName: sim.thingName, keyAlg: this.opts.keyAlgorithm, keyEnc, csrPem }, this.owner, LEASE_MS);
    }
    if (!this.store.acquireLease(sim.imsi, this.owner, LEASE_MS, ownerIsDead)) return undefined;
    try {
      for (;;) {
        const row = this.store.get(sim.imsi)!;
        const next = VEND_STEPS[VEND_STEPS.indexOf(row.step) + 1] as VendStep | undefined;
        if (!next) break;
        this.store.acquireLease(sim.imsi, this.owner, LEASE_MS);
        switch (next) {
          case 'certificate': {
            const cert = await provider.createCertificate(row.csrPem);
            this.store.completeStep(sim.imsi, 'certificate', { id: cert.certificateId, arn: cert.certificateArn, pem: cert.certificatePem });
            this.opts.audit.record('certificate_created', sim.imsi, { certificateId: cert.certificateId });
            break;
          }
          case 'thing':
            await provider.ensureThing(sim.thingName, { imsi: sim.imsi, group: sim.group });
            this.store.completeStep(sim.imsi, 'thing');
            break;
          case 'policy': {
            const policy = this.opts.policyFor(sim.group);
            await provider.ensurePolicy(policy.name, policyDocument({ ...arnScope(row.certArn!), topicTemplates: policy.topicTemplates }));
            await provider.attachPolicy(policy.name, row.certArn!);
            this.store.completeStep(sim.imsi, 'policy');
            break;
          }
          case 'ready':
            await provider.attachThingPrincipal(sim.thingName, row.certArn!);
            this.store.completeStep(sim.imsi, 'ready');
            this.opts.audit.record('vended', sim.imsi, { thing: sim.thingName, certificateId: row.certId });
            this.opts.log.info({ thing: sim.thingName }, 'device vended');
            break;
        }
      }
    } finally {
      this.store.releaseLease(sim.imsi, this.owner);
    }
    return this.ready(sim.imsi);
  }
}
