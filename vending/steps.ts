import type { Logger } from 'pino';
import type { CredentialRow, CredentialStore } from '../storage/credentials.ts';
import type { Sim } from '../storage/sims.ts';
import type { ApiGate } from './api-gate.ts';
import { certificateFacts } from './keys.ts';
import type { Lease } from './lease.ts';
import { arnScope, policyDocument } from './policy.ts';
import type { IssuedCertificate, VendingProvider } from './provider.ts';

export type ThingAttribute = 'imsi' | 'group' | 'imei' | 'iccid' | 'msisdn';

export interface StepsOptions {
  store: CredentialStore;
  provider: VendingProvider;
  gate: ApiGate;
  log: Logger;
  policyFor(group: string): { name: string; topicTemplates: string[]; basicIngestRule?: string };
  thingAttributes: ThingAttribute[];
  thingType?: string;
  /** Thing group name of a SIM group, if things join one. */
  thingGroupFor?(group: string): string;
  orphanGraceMs: number;
  /** How long the certificate a rotation replaces may stay in use. */
  retireAfterMs: number;
  /** A policy got a new default version: refusals for a while after are not the messages' fault. */
  onPolicyUpdated?(policyName: string): void;
  /** Disposes of a certificate we created but could not record (deactivate, maybe delete). */
  disposeUnrecorded(cert: IssuedCertificate, imsi: string): Promise<void>;
}

/** The row changed under us: revoked, finished or taken over by another process. Re-read and decide again. */
export class StaleRowError extends Error {
  override readonly name = 'StaleRowError';
}

// IoT Core attribute values: [a-zA-Z0-9_.,@/:#=[]-], up to 800 characters.
const attributeValue = (v: string) => v.replace(/[^a-zA-Z0-9_.,@/:#=[\]-]/g, '_').slice(0, 800);

export function thingAttributes(sim: Sim, names: ThingAttribute[]): Record<string, string> {
  const facts: Record<ThingAttribute, string | null> = { imsi: sim.imsi, group: sim.group, imei: sim.boundImei, iccid: sim.iccid, msisdn: sim.msisdn };
  const out: Record<string, string> = {};
  for (const name of names) {
    const v = facts[name];
    if (v) out[name] = attributeValue(v);
  }
  return out;
}

/**
 * The vending state machine over one leased credentials row. Each step makes its IoT Core calls (all
 * idempotent except CreateCertificateFromCsr, see certificate()) and then records its completion with
 * a write fenced by step and lease owner. A crash between a call and its record repeats the call.
 */
export class VendSteps {
  private readonly policies = new Map<string, Promise<void>>();
  private readonly groups = new Map<string, Promise<void>>();

  constructor(private readonly o: StepsOptions) {}

  /** Runs the remaining steps; returns the certificate replaced when this was a rotation. */
  async run(rowId: number, sim: Sim, lease: Lease): Promise<{ promoted: CredentialRow; previous?: CredentialRow } | undefined> {
    for (;;) {
      // Renewed in the background; every write below is fenced by the owner anyway.
      if (lease.lost) throw new StaleRowError('vending lease lost');
      const row = await this.o.store.byId(rowId);
      if (!row) throw new StaleRowError('credentials row vanished');
      switch (row.step) {
        case 'key':
        case 'csr_sent':
          await this.certificate(row, lease);
          break;
        case 'certificate':
          await this.thing(row, sim, lease);
          break;
        case 'thing':
          await this.policy(row, sim, lease);
          break;
        case 'policy':
          return this.attach(row, lease);
        default:
          return undefined; // ready, retiring or retired: nothing left for us
      }
    }
  }

  /**
   * CreateCertificateFromCsr is the one call that is not idempotent: each call makes a new certificate.
   * csr_sent is committed before the request leaves; any send whose answer we did not record (a crash,
   * a timeout, a 5xx) flags the row, and the orphan sweep later deactivates every certificate carrying
   * this key that is not the one recorded.
   */
  private async certificate(row: CredentialRow, lease: Lease): Promise<void> {
    const { store, gate, provider, orphanGraceMs } = this.o;
    if (!(await store.markCsrSent(row.id, lease.owner, Date.now() + orphanGraceMs))) throw new StaleRowError('row changed before CreateCertificateFromCsr');
    const cert = await gate.call('CreateCertificateFromCsr', (s) => provider.createCertificate(row.csrPem, s), {
      onUncertain: () => void store.flagOrphanCheck(row.id, Date.now() + orphanGraceMs).catch((err) => this.o.log.warn({ err: String(err) }, 'orphan check not flagged')),
    });
    let recorded = false;
    try {
      const facts = certificateFacts(cert.certificatePem);
      // The step and its audit row are one commit.
      recorded =
        facts.fingerprint === row.pubkeySha256 &&
        (await store.advance(
          row.id,
          lease.owner,
          'csr_sent',
          'certificate',
          { certId: cert.certificateId, certArn: cert.certificateArn, certPem: cert.certificatePem, notAfter: facts.notAfter },
          { kind: 'certificate_created', imsi: row.imsi, detail: { certificateId: cert.certificateId, generation: row.id } },
        ));
    } catch (err) {
      this.o.log.error({ err: String(err), certificateId: cert.certificateId }, 'could not record a new certificate');
    }
    if (!recorded) {
      // Revoked or taken over while the request was out (or not our key): nobody will use this one.
      await this.o.disposeUnrecorded(cert, row.imsi);
      throw new StaleRowError('certificate created but the row changed meanwhile; it was deactivated');
    }
  }

  private async thing(row: CredentialRow, sim: Sim, lease: Lease): Promise<void> {
    const { gate, provider } = this.o;
    const attributes = thingAttributes(sim, this.o.thingAttributes);
    await gate.call('CreateThing', (s) => provider.ensureThing(row.thingName, attributes, this.o.thingType, s));
    const group = this.o.thingGroupFor?.(sim.group);
    if (group) {
      await once(this.groups, group, () => gate.call('CreateThingGroup', (s) => provider.ensureThingGroup(group, s)));
      await gate.call('AddThingToThingGroup', (s) => provider.addThingToGroup(row.thingName, group, s));
    }
    if (!(await this.o.store.advance(row.id, lease.owner, 'certificate', 'thing'))) throw new StaleRowError('row changed during CreateThing');
  }

  private async policy(row: CredentialRow, sim: Sim, lease: Lease): Promise<void> {
    const { gate, provider } = this.o;
    const policy = this.o.policyFor(sim.group);
    const document = policyDocument({ ...arnScope(row.certArn!), topicTemplates: policy.topicTemplates, basicIngestRule: policy.basicIngestRule });
    // CreatePolicy has a low quota (10/s): once per policy document per process, not once per device.
    await once(this.policies, `${policy.name}\n${document}`, async () => {
      const outcome = await gate.call('CreatePolicy', (s) => provider.ensurePolicy(policy.name, document, s));
      if (outcome !== 'updated') return;
      this.o.log.warn({ policy: policy.name }, 'policy updated to a new default version; devices see it only once IoT Core has propagated it (minutes)');
      this.o.onPolicyUpdated?.(policy.name);
    });
    await gate.call('AttachPolicy', (s) => provider.attachPolicy(policy.name, row.certArn!, s));
    if (!(await this.o.store.advance(row.id, lease.owner, 'thing', 'policy', { policyName: policy.name }))) throw new StaleRowError('row changed during AttachPolicy');
  }

  private async attach(row: CredentialRow, lease: Lease): Promise<{ promoted: CredentialRow; previous?: CredentialRow }> {
    const { gate, provider, store } = this.o;
    await gate.call('AttachThingPrincipal', (s) => provider.attachThingPrincipal(row.thingName, row.certArn!, s));
    // Promotion and its audit row are one commit.
    const { ok, previous } = await store.promote(row.id, lease.owner, Date.now() + this.o.retireAfterMs, (replaced) => ({
      kind: 'vended',
      imsi: row.imsi,
      detail: { thing: row.thingName, certificateId: row.certId, generation: row.id, replaces: replaced?.certId ?? undefined },
    }));
    if (!ok) throw new StaleRowError('row changed during AttachThingPrincipal');
    this.o.log.info({ thing: row.thingName, certificateId: row.certId, rotation: Boolean(previous) }, 'device vended');
    return { promoted: (await store.byId(row.id))!, previous };
  }
}

/** Runs fn once per key at a time and remembers success; a failure is forgotten so the next caller retries. */
function once(cache: Map<string, Promise<void>>, key: string, fn: () => Promise<unknown>): Promise<void> {
  let p = cache.get(key);
  if (!p) {
    p = fn().then(() => undefined);
    cache.set(key, p);
    p.catch(() => cache.delete(key));
  }
  return p;
}
