import type { Logger } from 'pino';
import type { VendingConfig } from '../config/vending.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { CredentialRow, CredentialStore, Purpose } from '../storage/credentials.ts';
import type { Sim, SimRegistry } from '../storage/sims.ts';
import { ApiGate, ApiError } from './api-gate.ts';
import type { KeyCipher } from './key-cipher.ts';
import { certificateNotAfter, csrFingerprint, generateKeyAndCsr } from './keys.ts';
import { Lease, leaseOwnerId } from './lease.ts';
import { OrphanSweeper } from './orphans.ts';
import type { VendingProvider } from './provider.ts';
import { WorkQueue, type Outcome } from './queue.ts';
import { syncPolicies, type PolicySyncOutcome } from './policy-sync.ts';
import { Retirer } from './retire.ts';
import { backoffMs, sleep, type FailureKind } from './retry.ts';
import { scheduleRotation } from './rotation.ts';
import { StaleRowError, VendSteps } from './steps.ts';
import { fillName } from './policy.ts';

export interface DeviceCredentials {
  thingName: string;
  certificateId: string;
  certificatePem: string;
  privateKeyPem: string;
  /** When this certificate was vended (ms): IoT Core may still be propagating it for a while. */
  issuedAt?: number;
}

/** Credentials from a vended row: its key opened under the label it was sealed with (an IMSI, or the gateway's). */
export function unsealedCredentials(
  row: { thingName: string; certId: string | null; certPem: string | null; keyEnc: Buffer; updatedAt: number },
  cipher: KeyCipher,
  label: string,
): DeviceCredentials {
  return {
    thingName: row.thingName,
    certificateId: row.certId!,
    certificatePem: row.certPem!,
    privateKeyPem: cipher.decrypt(row.keyEnc, label).toString('utf8'),
    issuedAt: row.updatedAt,
  };
}

/** A SIM's certificate was replaced (rotation). Its upstream session should reconnect with `credentials`. */
export interface CredentialsRotated {
  imsi: string;
  thingName: string;
  previousCertificateId: string | null;
  credentials: DeviceCredentials;
}

/** A SIM's certificates were deactivated in IoT Core. Its upstream session should be dropped. */
export interface CredentialsRevoked {
  imsi: string;
  thingName: string;
  reason: string;
  certificateIds: string[];
}

export interface VendorHooks {
  /** A vend finished; seconds from the first request to ready (queueing included). */
  onVended?(seconds: number): void;
  /** A vending attempt failed after its API retries; it will be retried. */
  onFailure?(err: Error): void;
  /** SIMs waiting for or in vending, on every change. */
  onQueueDepth?(depth: number): void;
  /** The old certificate is retired once every listener's promise settles (at most rotation.retireAfterMs). */
  onRotated?(ev: CredentialsRotated): void | Promise<void>;
  onRevoked?(ev: CredentialsRevoked): void | Promise<void>;
  /** A group's policy got a new default version in IoT Core (it takes minutes to apply there). */
  onPolicyUpdated?(policyName: string): void;
}

export interface VendorOptions extends VendorHooks {
  config: VendingConfig;
  sims: SimRegistry;
  credentials: CredentialStore;
  provider: VendingProvider;
  cipher: KeyCipher;
  audit: AuditStore;
  log: Logger;
  /** Policy name and the upstream topic templates of a SIM group. */
  policyFor(group: string): { name: string; topicTemplates: string[] };
  /** Ask DescribeEndpoint once while vending (the upstream endpoint is not configured). Default true. */
  needsDataEndpoint?: boolean;
}

/** Vending will not happen for this SIM (terminated, unknown, revoked meanwhile). */
export class VendingRefusedError extends Error {
  override readonly name = 'VendingRefusedError';
}

const DAY_MS = 86_400_000;


/**
 * Certificate vending for SIMs: a bounded queue of SIMs, each vended by the crash-safe state machine in
 * steps.ts under a database lease (exactly once across processes sharing the database), every IoT Core
 * call paced to its quota. Also revocation, rotation before expiry, and the background work that
 * finishes what a crash interrupted (retirements, orphan certificates).
 */
export class Vendor {
  private readonly store: CredentialStore;
  private readonly sims: SimRegistry;
  private readonly gate: ApiGate;
  private readonly queue: WorkQueue<DeviceCredentials | undefined>;
  private readonly steps: VendSteps;
  private readonly retirer: Retirer;
  private readonly sweeper: OrphanSweeper;
  private readonly owner = leaseOwnerId();
  private readonly rotatedHooks = new Set<(ev: CredentialsRotated) => void | Promise<void>>();
  private readonly revokedHooks = new Set<(ev: CredentialsRevoked) => void | Promise<void>>();
  private readonly failures: Record<FailureKind, number> = { throttled: 0, server: 0, network: 0, client: 0 };
  private endpoint: Promise<string> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private cron: { stop(): void } | undefined;
  private stopped = false;

  constructor(private readonly opts: VendorOptions) {
    const c = opts.config;
    this.store = opts.credentials;
    this.sims = opts.sims;
    this.gate = new ApiGate({
      rates: c.quotas,
      burstSeconds: c.burstSeconds,
      timeoutMs: c.callTimeoutMs,
      maxAttempts: c.callMaxAttempts,
      retryDelayMs: c.callRetryDelayMs,
      retryMaxDelayMs: c.callRetryMaxDelayMs,
      onAttemptFailed: (api, kind, err) => opts.log.debug({ api, kind, err: (err as Error)?.name }, 'IoT Core call failed'),
    });
    this.queue = new WorkQueue({ concurrency: c.concurrency, maxJobs: c.maxQueue, onDepth: opts.onQueueDepth });
    this.retirer = new Retirer({
      store: this.store,
      provider: opts.provider,
      gate: this.gate,
      audit: opts.audit,
      log: opts.log,
      owner: this.owner,
      leaseMs: c.leaseMs,
      orphanGraceMs: c.orphanGraceMs,
      deleteRetired: c.deleteRevoked,
      propagationWaitMs: c.propagationWaitMs,
      policyOf: async (row) => {
        const sim = await this.sims.get(row.imsi);
        return sim && opts.policyFor(sim.group).name;
      },
    });
    this.sweeper = new OrphanSweeper({
      store: this.store,
      provider: opts.provider,
      gate: this.gate,
      audit: opts.audit,
      log: opts.log,
      marginMs: c.orphanScanMarginMs,
      deleteStrays: c.deleteRevoked,
    });
    this.steps = new VendSteps({
      store: this.store,
      provider: opts.provider,
      gate: this.gate,
      log: opts.log,
      policyFor: opts.policyFor,
      thingAttributes: c.thingAttributes,
      thingType: c.thingType,
      thingGroupFor: c.thingGroup ? (group) => fillName(c.thingGroup!, { group }) : undefined,
      orphanGraceMs: c.orphanGraceMs,
      retireAfterMs: c.rotation.retireAfterMs,
      onPolicyUpdated: opts.onPolicyUpdated,
      disposeUnrecorded: async (cert, imsi) => {
        await this.gate.call('UpdateCertificate', (s) => opts.provider.setCertificateStatus(cert.certificateId, 'INACTIVE', s));
        if (c.deleteRevoked) await this.gate.call('DeleteCertificate', (s) => opts.provider.deleteCertificate(cert.certificateId, s));
        await opts.audit.record('orphan_certificate_disposed', imsi, { certificateId: cert.certificateId, was: 'ACTIVE', deleted: c.deleteRevoked });
      },
    });
    if (opts.onRotated) this.rotatedHooks.add(opts.onRotated);
    if (opts.onRevoked) this.revokedHooks.add(opts.onRevoked);
  }

  /** SIMs waiting for or in vending. */
  get queueDepth(): number {
    return this.queue.depth;
  }

  /** Vending attempts that failed after their API retries, by how the last call failed. */
  get failureCounts(): Readonly<Record<FailureKind, number>> {
    return { ...this.failures };
  }

  /** Registers a "credentials rotated" listener (the upstream session pool reconnects); returns its removal. */
  onRotated(fn: (ev: CredentialsRotated) => void | Promise<void>): () => void {
    this.rotatedHooks.add(fn);
    return () => this.rotatedHooks.delete(fn);
  }

  onRevoked(fn: (ev: CredentialsRevoked) => void | Promise<void>): () => void {
    this.revokedHooks.add(fn);
    return () => this.revokedHooks.delete(fn);
  }

  /** Resumes what a previous run left unfinished and starts the background work (retirements, orphan sweep, rotation). */
  start(): void {
    void this.store.vendingImsis().then(
      (rows) => {
        for (const { imsi, purpose } of rows) this.submit(imsi, purpose, 'background');
      },
      (err) => this.opts.log.warn({ err: String(err) }, 'unfinished vends not resumed'),
    );
    const c = this.opts.config;
    const tickMs = Math.min(5_000, Math.max(250, Math.floor(c.orphanGraceMs / 4)));
    this.timer = setInterval(() => void this.maintain(), tickMs);
    this.timer.unref();
    void this.maintain();
    if (c.rotation.enabled) this.cron = scheduleRotation(c.rotation.schedule, () => this.rotateExpiring(), this.opts.log);
  }

  /** Stops taking work; pending callers are rejected, running steps end at their next call. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    this.cron?.stop();
    this.queue.stop(new VendingRefusedError('vending stopped'));
    this.gate.stop();
    this.opts.provider.destroy?.();
  }

  /** Credentials of a SIM whose certificate is in use, else undefined. */
  async ready(imsi: string): Promise<DeviceCredentials | undefined> {
    const row = await this.store.ready(imsi);
    return row && this.credentialsOf(row);
  }

  /** The SIM's credentials, vending them first if needed (once, however many callers ask at the same time). */
  async ensure(sim: Sim): Promise<DeviceCredentials> {
    const done = await this.ready(sim.imsi);
    if (done) return done;
    if (sim.status === 'terminated') throw new VendingRefusedError(`SIM ${sim.imsi} is terminated`);
    return this.submit(sim.imsi, 'first', 'urgent') as Promise<DeviceCredentials>;
  }

  /**
   * Vends a registered SIM ahead of its first contact, behind SIMs whose devices are waiting. With
   * giveUpAfter, rejects with the last error after that many failed attempts instead of retrying on.
   */
  async prevend(imsi: string, giveUpAfter = Infinity): Promise<DeviceCredentials> {
    const done = await this.ready(imsi);
    if (done) return done;
    return this.submit(imsi, 'first', 'background', giveUpAfter) as Promise<DeviceCredentials>;
  }

  /**
   * Takes the SIM's certificates out of service (termination, IMEI-lock violation): UpdateCertificate
   * INACTIVE, detach from policy and thing, delete if vending.deleteRevoked. A vend in progress is
   * abandoned (a certificate it is creating is deactivated when it arrives). The SIM's next vend, if it
   * is active again, makes a fresh key and certificate. Rejects if IoT Core could not be told; the
   * retirement then goes on in the background.
   */
  async revoke(imsi: string, reason: string): Promise<{ certificateIds: string[] }> {
    const rows = await this.store.markRetiring(imsi, reason, Date.now());
    const refused = new VendingRefusedError(`credentials of ${imsi} revoked: ${reason}`);
    this.queue.cancel(imsi, refused);
    this.queue.cancel(`rotate:${imsi}`, refused);
    // A row still being vended here is released by its job at its next step; wait for that (bounded).
    const deadline = Date.now() + this.opts.config.leaseMs;
    for (const row of rows) {
      while (!(await this.retirer.retire(row))) {
        if (Date.now() > deadline || this.stopped) throw new Error(`revoking ${imsi}: certificate ${row.certId ?? '(being created)'} is still held by a vending process`);
        await sleep(100);
      }
    }
    const certificateIds = rows.flatMap((r) => (r.certId ? [r.certId] : []));
    await this.opts.audit.record('credentials_revoked', imsi, { reason, certificateIds });
    const ev: CredentialsRevoked = { imsi, thingName: rows[0]?.thingName ?? (await this.sims.get(imsi))?.thingName ?? '', reason, certificateIds };
    await Promise.allSettled([...this.revokedHooks].map(async (fn) => fn(ev)));
    return { certificateIds };
  }

  /**
   * The daily rotation job: queues a re-vend for every active SIM whose certificate expires within
   * rotation.renewBeforeDays or is older than rotation.maxAgeDays, as background work and as far as the queue has room (the rest waits for the
   * next run). Resolves with how many were queued.
   */
  async rotateExpiring(): Promise<number> {
    for (let rows = await this.store.readyWithoutExpiry(1000); rows.length > 0; rows = await this.store.readyWithoutExpiry(1000)) {
      for (const row of rows) await this.store.setNotAfter(row.id, certificateNotAfter(row.certPem!));
    }
    const room = this.opts.config.maxQueue - this.queue.depth;
    if (room <= 0) return 0;
    const { renewBeforeDays, maxAgeDays } = this.opts.config.rotation;
    const imsis = await this.store.expiring(Date.now() + renewBeforeDays * DAY_MS, room, Date.now() - maxAgeDays * DAY_MS);
    for (const imsi of imsis) void this.submit(imsi, 'rotation', 'background');
    return imsis.length;
  }

  /** The IoT Core data endpoint (DescribeEndpoint iot:Data-ATS), asked once. */
  dataEndpoint(): Promise<string> {
    if (!this.endpoint) {
      this.endpoint = this.gate.call('DescribeEndpoint', (s) => this.opts.provider.dataEndpoint(s));
      this.endpoint.catch(() => (this.endpoint = undefined));
    }
    return this.endpoint;
  }

  /** One IoT Core call, paced and retried within the same quotas as the vendor's own (the gateway's identity). */
  callApi<T>(api: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return this.gate.call(api, fn);
  }

  /** Runs the orphan sweep now (it also runs periodically after start()). */
  sweepOrphans(): Promise<number> {
    return this.sweeper.sweep();
  }

  /**
   * Brings the policies of these groups in IoT Core up to their current rendering (at start, and for
   * the groups a reload changed), so devices vended earlier get a changed topic template too.
   */
  syncPolicies(groups: string[]): Promise<Map<string, PolicySyncOutcome>> {
    const { provider, log, onPolicyUpdated } = this.opts;
    return syncPolicies(groups.map((g) => this.opts.policyFor(g)), { provider, gate: this.gate, log, onPolicyUpdated });
  }

  /** Retires every certificate that is due now (it also runs periodically after start()). */
  retireDue(): Promise<number> {
    return this.retirer.retireDue();
  }

  private async maintain(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.retirer.retireDue();
      await this.sweeper.sweep();
    } catch (err) {
      if (!this.stopped) this.opts.log.warn({ err: String(err) }, 'vending maintenance failed; will retry');
    }
  }

  private submit(imsi: string, purpose: Purpose, priority: 'urgent' | 'background', giveUpAfter = Infinity): Promise<DeviceCredentials | undefined> {
    const key = purpose === 'first' ? imsi : `rotate:${imsi}`;
    const job = { started: Date.now(), failures: 0, giveUpAfter };
    return this.queue.submit(key, priority, () => this.runJob(imsi, purpose, job));
  }

  private credentialsOf(row: CredentialRow): DeviceCredentials {
    return unsealedCredentials(row, this.opts.cipher, row.imsi);
  }

  /** One run of a SIM's job: vend or resume its generation, or say when to look again. */
  private async runJob(
    imsi: string,
    purpose: Purpose,
    job: { started: number; failures: number; giveUpAfter: number },
  ): Promise<Outcome<DeviceCredentials | undefined>> {
    const c = this.opts.config;
    const sim = await this.sims.get(imsi);
    if (!sim) throw new VendingRefusedError(`SIM ${imsi} is not registered`);
    if (sim.status === 'terminated' && (await this.store.vending(imsi))) {
      // Terminated half-way through a vend (found on resume): retire what exists, orphans included.
      await this.store.markRetiring(imsi, 'sim_terminated', Date.now());
      void this.retirer.retireDue().catch(() => undefined);
    }
    if (purpose === 'first') {
      const done = await this.ready(imsi);
      if (done) return { done };
      if (sim.status === 'terminated') throw new VendingRefusedError(`SIM ${imsi} is terminated`);
    } else if (sim.status !== 'active') {
      return { done: undefined };
    }

    let row = await this.store.vending(imsi);
    let lease: Lease | undefined;
    if (!row) {
      if (purpose === 'rotation' && !(await this.needsRotation(imsi))) return { done: undefined };
      row = await this.newGeneration(sim, purpose);
      if (row) lease = Lease.held(this.store, row.id, this.owner, c.leaseMs);
      else row = await this.store.vending(imsi); // another process created it just now
      if (!row) return { retryInMs: 0 }; // ... or even finished it: look again
    }
    if (!row.pubkeySha256) await this.store.setPubkeyHash(row.id, csrFingerprint(row.csrPem));
    lease ??= await Lease.acquire(this.store, row.id, this.owner, c.leaseMs);
    if (!lease) return { retryInMs: Math.min(c.retryDelayMs, 500) }; // another process is vending it

    try {
      const result = await this.steps.run(row.id, sim, lease);
      if (result) {
        this.opts.onVended?.((Date.now() - job.started) / 1000);
        if (result.previous) this.afterRotation(result.promoted, result.previous);
        // Warm the endpoint cache now, so the device's first upstream session does not wait for it.
        if (this.opts.needsDataEndpoint !== false) {
          this.dataEndpoint().catch((err) => this.opts.log.warn({ err: String(err) }, 'DescribeEndpoint failed; will ask again'));
        }
      }
    } catch (err) {
      if (err instanceof StaleRowError || this.stopped) return { retryInMs: 0 };
      const e = err as Error;
      await this.store.recordFailure(row.id, e.message ?? String(e));
      this.failures[err instanceof ApiError ? err.kind : 'client']++;
      this.opts.onFailure?.(e);
      if (++job.failures >= job.giveUpAfter) throw e;
      this.opts.log.warn({ thing: sim.thingName, err: e.message }, 'vending step failed; will retry');
      return { retryInMs: backoffMs(row.attempts, c.retryDelayMs, c.retryMaxDelayMs) };
    } finally {
      await lease.release();
    }
    if (purpose === 'rotation') return { done: undefined };
    const done = await this.ready(imsi);
    return done ? { done } : { retryInMs: 0 };
  }

  private async newGeneration(sim: Sim, purpose: Purpose): Promise<CredentialRow | undefined> {
    const alg = this.opts.config.keyAlgorithm;
    const { privateKeyPem, csrPem, fingerprint } = await generateKeyAndCsr(sim.thingName, alg);
    const keyEnc = this.opts.cipher.encrypt(Buffer.from(privateKeyPem), sim.imsi);
    return this.store.createGeneration(
      { imsi: sim.imsi, thingName: sim.thingName, purpose, keyAlg: alg, keyEnc, csrPem, pubkeySha256: fingerprint },
      this.owner,
      this.opts.config.leaseMs,
    );
  }

  private async needsRotation(imsi: string): Promise<boolean> {
    const row = await this.store.ready(imsi);
    const { renewBeforeDays, maxAgeDays } = this.opts.config.rotation;
    const horizon = Date.now() + renewBeforeDays * DAY_MS;
    // IoT Core's certificates from a CSR are valid until 2049: their age is what makes them due.
    return Boolean(row && ((row.notAfter ?? certificateNotAfter(row.certPem!)) < horizon || row.createdAt < Date.now() - maxAgeDays * DAY_MS));
  }

  /**
   * Tells the listeners (the session pool reconnects with the new certificate) and retires the old
   * certificate once they are done. With no listener, or one that failed (the new certificate did not
   * connect: IoT Core may still be propagating it), it retires when rotation.retireAfterMs is over.
   */
  private afterRotation(promoted: CredentialRow, previous: CredentialRow): void {
    const ev: CredentialsRotated = {
      imsi: promoted.imsi,
      thingName: promoted.thingName,
      previousCertificateId: previous.certId,
      credentials: this.credentialsOf(promoted),
    };
    this.opts.audit
      .record('credentials_rotated', promoted.imsi, { certificateId: promoted.certId, previousCertificateId: previous.certId })
      .catch((err) => this.opts.log.warn({ imsi: promoted.imsi, err: String(err) }, 'rotation not audited'));
    if (this.rotatedHooks.size === 0) return;
    void Promise.allSettled([...this.rotatedHooks].map(async (fn) => fn(ev))).then(async (results) => {
      // Only once the new certificate has connected: otherwise the old one stays until retireAfterMs.
      if (this.stopped || results.some((r) => r.status === 'rejected')) return;
      await this.store.retireNow(previous.id);
      await this.retirer.retireDue().catch(() => undefined); // the periodic pass retries
    });
  }
}
