import type { Logger } from 'pino';
import type { AuditStore } from '../storage/audit.ts';
import type { CredentialRow, CredentialStore } from '../storage/credentials.ts';
import type { ApiGate } from './api-gate.ts';
import { Lease } from './lease.ts';
import { untilPropagated } from './retry.ts';
import type { VendingProvider } from './provider.ts';

export interface RetirerOptions {
  store: CredentialStore;
  provider: VendingProvider;
  gate: ApiGate;
  audit: AuditStore;
  log: Logger;
  owner: string;
  leaseMs: number;
  orphanGraceMs: number;
  deleteRetired: boolean;
  /** Longest wait for a detachment to propagate before DeleteCertificate gives up (this pass). */
  propagationWaitMs: number;
  /** Policy a row's certificate had when the row did not record it (rows from before it was recorded). */
  policyOf(row: CredentialRow): Promise<string | undefined>;
}

const BATCH = 100;
const PROPAGATION_STEP_MS = 2000;

/**
 * Takes certificates out of service in IoT Core: UpdateCertificate INACTIVE first (the data plane
 * refuses it from then on), then detach from policy and thing, then delete if configured. Every call
 * is safe to repeat, so a crash part way through simply starts the row over.
 */
export class Retirer {
  private running: Promise<number> | undefined;

  constructor(private readonly o: RetirerOptions) {}

  /** Retires every row that is due (joining a pass already running); resolves with how many were done. */
  retireDue(): Promise<number> {
    this.running ??= this.pass().finally(() => (this.running = undefined));
    return this.running;
  }

  private async pass(): Promise<number> {
    let done = 0;
    const tried = new Set<number>();
    for (;;) {
      const rows = (await this.o.store.dueRetirements(BATCH)).filter((r) => !tried.has(r.id));
      if (rows.length === 0) return done;
      const results = await Promise.allSettled(rows.map((r) => (tried.add(r.id), this.retire(r))));
      for (const [i, r] of results.entries()) {
        if (r.status === 'fulfilled' && r.value) done++;
        else if (r.status === 'rejected') this.o.log.warn({ imsi: rows[i]!.imsi, err: String(r.reason) }, 'retiring a certificate failed; will retry');
      }
    }
  }

  /** Retires one row now; false when another worker holds it (it is still vending, or being retired). */
  async retire(row: CredentialRow): Promise<boolean> {
    const { store, gate, provider } = this.o;
    const lease = await Lease.acquire(store, row.id, this.o.owner, this.o.leaseMs);
    if (!lease) return false;
    try {
      const fresh = await store.byId(row.id);
      if (!fresh || fresh.step !== 'retiring') return fresh?.step === 'retired';
      if (fresh.certId && fresh.certArn) {
        const { certId, certArn } = fresh;
        await gate.call('UpdateCertificate', (s) => provider.setCertificateStatus(certId, 'INACTIVE', s));
        const policy = fresh.policyName ?? (await this.o.policyOf(fresh));
        if (policy) await gate.call('DetachPolicy', (s) => provider.detachPolicy(policy, certArn, s));
        await gate.call('DetachThingPrincipal', (s) => provider.detachThingPrincipal(fresh.thingName, certArn, s));
        if (this.o.deleteRetired) {
          // Right after the detach, IoT Core may still see the thing attached (DeleteConflictException).
          await untilPropagated(() => gate.call('DeleteCertificate', (s) => provider.deleteCertificate(certId, s)), this.o.propagationWaitMs, PROPAGATION_STEP_MS);
        }
      }
      if (fresh.csrSentAt !== null && !fresh.certId) {
        // Retired while its CreateCertificateFromCsr may still be on its way: let the orphan sweep find it.
        await store.flagOrphanCheck(fresh.id, Date.now() + this.o.orphanGraceMs);
      }
      if (!(await store.markRetired(fresh.id, lease.owner))) return false;
      await this.o.audit.record('certificate_retired', fresh.imsi, {
        certificateId: fresh.certId,
        reason: fresh.retireReason,
        deleted: Boolean(fresh.certId) && this.o.deleteRetired,
      });
      this.o.log.info({ imsi: fresh.imsi, certificateId: fresh.certId, reason: fresh.retireReason }, 'certificate retired');
      return true;
    } finally {
      await lease.release();
    }
  }
}
