import type { Logger } from 'pino';
import type { AuditStore } from '../storage/audit.ts';
import type { CredentialRow, CredentialStore } from '../storage/credentials.ts';
import type { ApiGate } from './api-gate.ts';
import { certificateFingerprint, csrFingerprint } from './keys.ts';
import type { CertificateSummary, VendingProvider } from './provider.ts';

export interface OrphanSweeperOptions {
  store: CredentialStore;
  provider: VendingProvider;
  gate: ApiGate;
  audit: AuditStore;
  log: Logger;
  /** How far before the first send the scan reaches (clock difference with the CA). */
  marginMs: number;
  /** Delete strays after deactivating them. */
  deleteStrays: boolean;
}

const BATCH = 500;
const FINGERPRINT_CACHE = 10_000;

/**
 * Finds certificates IoT Core issued for one of our keys that simbridge never recorded (the answer to a
 * CreateCertificateFromCsr was lost to a crash, a timeout or a 5xx) and deactivates them, so no ACTIVE
 * certificate exists that we do not know about. One scan serves every flagged row: ListCertificates
 * newest first back to the earliest send, DescribeCertificate only for ids not in our database, and a
 * match on the public key's fingerprint.
 */
export class OrphanSweeper {
  private running: Promise<number> | undefined;
  /** certificate id → fingerprint; a certificate's key never changes. */
  private readonly fingerprints = new Map<string, string>();

  constructor(private readonly o: OrphanSweeperOptions) {}

  /** Sweeps once (joining a sweep already running); resolves with the number of strays disposed of. */
  sweep(): Promise<number> {
    this.running ??= this.run().finally(() => (this.running = undefined));
    return this.running;
  }

  private async run(): Promise<number> {
    const due = await this.o.store.dueOrphanChecks(BATCH);
    if (due.length === 0) return 0;
    const wanted = new Map<string, CredentialRow>();
    for (const row of due) wanted.set(await this.rowFingerprint(row), row);
    const since = Math.min(...due.map((r) => r.csrSentAt ?? r.createdAt)) - this.o.marginMs;

    const recent = await this.listSince(since);
    const known = await this.o.store.knownCertificateIds(recent.map((c) => c.certificateId));
    let disposed = 0;
    for (const c of recent) {
      if (known.has(c.certificateId)) continue;
      const fp = await this.fingerprintOf(c.certificateId);
      const row = fp && wanted.get(fp);
      if (!row || row.certId === c.certificateId) continue;
      await this.dispose(c, row);
      disposed++;
    }
    for (const row of due) await this.o.store.clearOrphanCheck(row.id, row.orphanCheckAt!);
    return disposed;
  }

  private async rowFingerprint(row: CredentialRow): Promise<string> {
    if (row.pubkeySha256) return row.pubkeySha256;
    const fp = csrFingerprint(row.csrPem);
    await this.o.store.setPubkeyHash(row.id, fp);
    return fp;
  }

  private async listSince(since: number): Promise<CertificateSummary[]> {
    const out: CertificateSummary[] = [];
    let marker: string | undefined;
    do {
      const page = await this.o.gate.call('ListCertificates', (s) => this.o.provider.listCertificates(marker, s));
      for (const c of page.certificates) if (c.createdAt >= since) out.push(c);
      const oldest = page.certificates.at(-1)?.createdAt;
      marker = oldest !== undefined && oldest >= since ? page.nextMarker : undefined;
    } while (marker);
    return out;
  }

  private async fingerprintOf(certificateId: string): Promise<string | undefined> {
    const cached = this.fingerprints.get(certificateId);
    if (cached) return cached;
    const d = await this.o.gate.call('DescribeCertificate', (s) => this.o.provider.describeCertificate(certificateId, s));
    if (!d) return undefined;
    let fp: string;
    try {
      fp = certificateFingerprint(d.certificatePem);
    } catch {
      return undefined; // not a certificate we could have asked for
    }
    if (this.fingerprints.size >= FINGERPRINT_CACHE) this.fingerprints.delete(this.fingerprints.keys().next().value!);
    this.fingerprints.set(certificateId, fp);
    return fp;
  }

  private async dispose(c: CertificateSummary, row: CredentialRow): Promise<void> {
    const { gate, provider } = this.o;
    if (c.status === 'ACTIVE') await gate.call('UpdateCertificate', (s) => provider.setCertificateStatus(c.certificateId, 'INACTIVE', s));
    if (this.o.deleteStrays) await gate.call('DeleteCertificate', (s) => provider.deleteCertificate(c.certificateId, s));
    await this.o.audit.record('orphan_certificate_disposed', row.imsi, {
      certificateId: c.certificateId,
      was: c.status,
      deleted: this.o.deleteStrays,
      keptCertificateId: row.certId,
    });
    this.o.log.warn({ imsi: row.imsi, certificateId: c.certificateId, deleted: this.o.deleteStrays }, 'deactivated a certificate issued for our key but never recorded');
  }
}
