import type { Db } from './db.ts';

/** Vending steps in order; `step` holds the last one completed. */
export const VEND_STEPS = ['key', 'certificate', 'thing', 'policy', 'ready'] as const;
export type VendStep = (typeof VEND_STEPS)[number];

export interface CredentialRow {
  imsi: string;
  thingName: string;
  step: VendStep;
  keyAlg: string;
  keyEnc: Buffer;
  csrPem: string;
  certId: string | null;
  certArn: string | null;
  certPem: string | null;
  lastError: string | null;
  attempts: number;
}

interface Raw {
  imsi: string; thing_name: string; step: VendStep; key_alg: string; key_enc: Buffer; csr_pem: string;
  cert_id: string | null; cert_arn: string | null; cert_pem: string | null; last_error: string | null; attempts: number;
}

/** Device credentials and where each SIM's vending stands. */
export class CredentialStore {
  constructor(private readonly db: Db) {}

  get(imsi: string): CredentialRow | undefined {
    const r = this.db.prepare('SELECT * FROM credentials WHERE imsi = ?').get(imsi) as Raw | undefined;
    return r && {
      imsi: r.imsi, thingName: r.thing_name, step: r.step, keyAlg: r.key_alg, keyEnc: r.key_enc, csrPem: r.csr_pem,
      certId: r.cert_id, certArn: r.cert_arn, certPem: r.cert_pem, lastError: r.last_error, attempts: r.attempts,
    };
  }

  /** Stores a fresh key and CSR unless the SIM already has a row; true when this call created it. */
  createKey(row: { imsi: string; thingName: string; keyAlg: string; keyEnc: Buffer; csrPem: string }, owner: string, leaseMs: number): boolean {
    const now = Date.now();
    return this.db
      .prepare(
        `INSERT INTO credentials (imsi, thing_name, step, key_alg, key_enc, csr_pem, lease_owner, lease_until, updated_at)
         VALUES (?, ?, 'key', ?, ?, ?, ?, ?, ?) ON CONFLICT (imsi) DO NOTHING`,
      )
      .run(row.imsi, row.thingName, row.keyAlg, row.keyEnc, row.csrPem, owner, now + leaseMs, now).changes === 1;
  }

  /**
   * Takes the SIM's vending lease for this process (free, expired or already ours). Two processes on one
   * database never run the same SIM's steps at once.
   */
  acquireLease(imsi: string, owner: string, leaseMs: number, isDead: (owner: string) => boolean = () => false): boolean {
    const now = Date.now();
    const current = this.db.prepare('SELECT lease_owner FROM credentials WHERE imsi = ?').pluck().get(imsi) as string | null | undefined;
    // A lease left by a process that died on this host is taken over at once instead of waiting it out.
    const takeOver = current && current !== owner && isDead(current) ? current : null;
    return this.db
      .prepare(
        `UPDATE credentials SET lease_owner = ?, lease_until = ?
         WHERE imsi = ? AND (lease_owner IS NULL OR lease_owner = ? OR lease_owner = ? OR lease_until < ?)`,
      )
      .run(owner, now + leaseMs, imsi, owner, takeOver, now).changes === 1;
  }

  releaseLease(imsi: string, owner: string): void {
    this.db.prepare('UPDATE credentials SET lease_owner = NULL, lease_until = NULL WHERE imsi = ? AND lease_owner = ?').run(imsi, owner);
  }

  completeStep(imsi: string, step: VendStep, cert?: { id: string; arn: string; pem: string }): void {
    const now = Date.now();
    if (cert) {
      this.db
        .prepare('UPDATE credentials SET step = ?, cert_id = ?, cert_arn = ?, cert_pem = ?, last_error = NULL, updated_at = ? WHERE imsi = ?')
        .run(step, cert.id, cert.arn, cert.pem, now, imsi);
    } else {
      this.db.prepare('UPDATE credentials SET step = ?, last_error = NULL, updated_at = ? WHERE imsi = ?').run(step, now, imsi);
    }
  }

  recordFailure(imsi: string, error: string): void {
    this.db.prepare('UPDATE credentials SET last_error = ?, attempts = attempts + 1, updated_at = ? WHERE imsi = ?').run(error, Date.now(), imsi);
  }
}
