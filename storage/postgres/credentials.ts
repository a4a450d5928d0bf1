import {
  fromRaw,
  VENDING_STEPS,
  type AuditEntry,
  type CredentialRaw,
  type CredentialRow,
  type CredentialStore,
  type NewKey,
  type Purpose,
  type StepFields,
  type VendingStep,
} from '../credentials.ts';
import { insertAudit } from './audit.ts';
import { transaction, type Pool, type Queryable } from './connect.ts';
import { auditFacts, queuePgEvents } from './events.ts';
import { changed } from './params.ts';

const VENDING_IN = `(${VENDING_STEPS.map((s) => `'${s}'`).join(', ')})`;

/**
 * Device credentials on PostgreSQL, with the rules of storage/credentials.ts: every change while vending
 * is a compare-and-set on the step and the lease owner, and a step's audit event commits with it.
 */
export class PgCredentialStore implements CredentialStore {
  constructor(
    private readonly pool: Pool,
    private readonly now: () => number = Date.now,
    /** The connection of the transaction this store is bound to; the pool when none. */
    private readonly db: Queryable = pool,
  ) {}

  /** fn with a store bound to one transaction. */
  private inTransaction<T>(fn: (tx: PgCredentialStore) => Promise<T>): Promise<T> {
    return transaction(this.pool, (c) => fn(new PgCredentialStore(this.pool, this.now, c)));
  }

  /** Inside the step's transaction: its audit row, and the fleet event it stands for (storage/postgres/events.ts). */
  private async record(entry: AuditEntry): Promise<void> {
    const at = Date.now();
    await insertAudit(this.db, at, entry.imsi, entry.kind, entry.detail);
    await queuePgEvents(this.pool, this.db, auditFacts(entry.kind, entry.imsi, entry.detail, at));
  }

  private async one(sql: string, args: unknown[]): Promise<CredentialRow | undefined> {
    const r = (await this.db.query<CredentialRaw>(sql, args)).rows[0];
    return r && fromRaw(r);
  }

  private async all(sql: string, args: unknown[]): Promise<CredentialRow[]> {
    return (await this.db.query<CredentialRaw>(sql, args)).rows.map(fromRaw);
  }

  private async run(sql: string, args: unknown[]): Promise<boolean> {
    return changed(await this.db.query(sql, args)) === 1;
  }

  byId(id: number): Promise<CredentialRow | undefined> {
    return this.one('SELECT * FROM credentials WHERE id = $1', [id]);
  }

  ready(imsi: string): Promise<CredentialRow | undefined> {
    return this.one("SELECT * FROM credentials WHERE imsi = $1 AND step = 'ready'", [imsi]);
  }

  vending(imsi: string): Promise<CredentialRow | undefined> {
    return this.one(`SELECT * FROM credentials WHERE imsi = $1 AND step IN ${VENDING_IN}`, [imsi]);
  }

  async countByState(): Promise<{ ready: number; vending: number }> {
    const { rows } = await this.db.query<{ ready: number; vending: number }>(
      `SELECT count(DISTINCT CASE WHEN step = 'ready' THEN imsi END) AS ready,
              count(DISTINCT CASE WHEN step IN ${VENDING_IN} THEN imsi END) AS vending
       FROM credentials`,
    );
    return rows[0]!;
  }

  async failureTally(): Promise<{ attempts: number; throttled: number }> {
    const { rows } = await this.db.query<{ attempts: number; throttled: number }>(
      "SELECT coalesce(sum(attempts), 0) AS attempts, count(CASE WHEN last_error LIKE '%Throttl%' THEN 1 END) AS throttled FROM credentials",
    );
    return rows[0]!;
  }

  history(imsi: string): Promise<CredentialRow[]> {
    return this.all('SELECT * FROM credentials WHERE imsi = $1 ORDER BY id', [imsi]);
  }

  /**
   * A new generation leased to owner unless the SIM already has one being vended (the partial unique index
   * decides between racing nodes), or, for a first vend, a certificate in use.
   */
  async createGeneration(key: NewKey, owner: string, leaseMs: number): Promise<CredentialRow | undefined> {
    const now = this.now();
    const { rows } = await this.db.query<CredentialRaw>(
      `INSERT INTO credentials (imsi, thing_name, purpose, step, key_alg, key_enc, csr_pem, pubkey_sha256, lease_owner, lease_until, created_at, updated_at)
       SELECT $1, $2, $3, 'key', $4, $5, $6, $7, $8, $9, $10, $10
       WHERE $3 <> 'first' OR NOT EXISTS (SELECT 1 FROM credentials WHERE imsi = $1 AND step = 'ready')
       ON CONFLICT DO NOTHING RETURNING *`,
      [key.imsi, key.thingName, key.purpose, key.keyAlg, key.keyEnc, key.csrPem, key.pubkeySha256, owner, now + leaseMs, now],
    );
    return rows[0] && fromRaw(rows[0]);
  }

  async acquireLease(id: number, owner: string, leaseMs: number, isDead: (holder: string) => boolean = () => false): Promise<boolean> {
    const now = this.now();
    const holder = (await this.db.query<{ lease_owner: string | null }>('SELECT lease_owner FROM credentials WHERE id = $1', [id])).rows[0]?.lease_owner;
    const takeOver = holder && holder !== owner && isDead(holder) ? holder : null;
    return this.run(
      `UPDATE credentials SET lease_owner = $1, lease_until = $2
       WHERE id = $3 AND (lease_owner IS NULL OR lease_owner = $1 OR lease_owner = $4 OR lease_until < $5)`,
      [owner, now + leaseMs, id, takeOver, now],
    );
  }

  renewLease(id: number, owner: string, leaseMs: number): Promise<boolean> {
    return this.run('UPDATE credentials SET lease_until = $1 WHERE id = $2 AND lease_owner = $3', [this.now() + leaseMs, id, owner]);
  }

  async releaseLease(id: number, owner: string): Promise<void> {
    await this.run('UPDATE credentials SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2', [id, owner]);
  }

  markCsrSent(id: number, owner: string, checkAt: number): Promise<boolean> {
    const now = this.now();
    return this.run(
      `UPDATE credentials SET
         orphan_check_at = CASE WHEN step = 'csr_sent' THEN greatest(coalesce(orphan_check_at, 0), $1) ELSE orphan_check_at END,
         step = 'csr_sent', csr_sent_at = coalesce(csr_sent_at, $2), updated_at = $2
       WHERE id = $3 AND step IN ('key', 'csr_sent') AND lease_owner = $4`,
      [checkAt, now, id, owner],
    );
  }

  async flagOrphanCheck(id: number, at: number): Promise<void> {
    await this.run('UPDATE credentials SET orphan_check_at = greatest(coalesce(orphan_check_at, 0), $1) WHERE id = $2', [at, id]);
  }

  /** Moves the row from step `from` to `to`, only while owner holds it; `audit` commits with it. */
  async advance(id: number, owner: string, from: VendingStep, to: VendingStep, fields: StepFields = {}, audit?: AuditEntry): Promise<boolean> {
    if (audit) {
      return this.inTransaction(async (tx) => {
        const ok = await tx.advance(id, owner, from, to, fields);
        if (ok) await tx.record(audit);
        return ok;
      });
    }
    return this.run(
      `UPDATE credentials SET step = $1, cert_id = coalesce($2, cert_id), cert_arn = coalesce($3, cert_arn), cert_pem = coalesce($4, cert_pem),
         not_after = coalesce($5, not_after), policy_name = coalesce($6, policy_name), last_error = NULL, updated_at = $7
       WHERE id = $8 AND step = $9 AND lease_owner = $10`,
      [to, fields.certId ?? null, fields.certArn ?? null, fields.certPem ?? null, fields.notAfter ?? null, fields.policyName ?? null, this.now(), id, from, owner],
    );
  }

  /** Puts the finished generation in use and retires the one it replaces, with `audit`'s event, in one transaction. */
  async promote(
    id: number,
    owner: string,
    retireAfter: number,
    audit?: (previous: CredentialRow | undefined) => AuditEntry,
  ): Promise<{ ok: boolean; previous?: CredentialRow }> {
    const now = this.now();
    return this.inTransaction(async (tx) => {
      const row = await tx.one('SELECT * FROM credentials WHERE id = $1 FOR UPDATE', [id]);
      if (!row || row.step !== 'policy' || row.leaseOwner !== owner) return { ok: false };
      const previous = await tx.ready(row.imsi);
      if (previous) {
        await tx.run("UPDATE credentials SET step = 'retiring', retire_reason = 'rotated', retire_after = $1, updated_at = $2 WHERE id = $3", [retireAfter, now, previous.id]);
      }
      await tx.run("UPDATE credentials SET step = 'ready', last_error = NULL, lease_owner = NULL, lease_until = NULL, updated_at = $1 WHERE id = $2", [now, id]);
      if (audit) await tx.record(audit(previous));
      return { ok: true, previous: previous && (await tx.byId(previous.id)) };
    });
  }

  async recordFailure(id: number, error: string): Promise<void> {
    await this.run('UPDATE credentials SET last_error = $1, attempts = attempts + 1, updated_at = $2 WHERE id = $3', [error, this.now(), id]);
  }

  markRetiring(imsi: string, reason: string, retireAfter: number): Promise<CredentialRow[]> {
    return this.all(
      `UPDATE credentials SET step = 'retiring', retire_reason = $1, retire_after = $2, updated_at = $3
       WHERE imsi = $4 AND (step = 'ready' OR step IN ${VENDING_IN}) RETURNING *`,
      [reason, retireAfter, this.now(), imsi],
    ).then((rows) => rows.sort((a, b) => a.id - b.id));
  }

  async retireNow(id: number): Promise<void> {
    await this.run("UPDATE credentials SET retire_after = $1 WHERE id = $2 AND step = 'retiring'", [this.now(), id]);
  }

  dueRetirements(limit: number): Promise<CredentialRow[]> {
    return this.all("SELECT * FROM credentials WHERE step = 'retiring' AND retire_after <= $1 ORDER BY retire_after LIMIT $2", [this.now(), limit]);
  }

  markRetired(id: number, owner: string): Promise<boolean> {
    return this.run(
      `UPDATE credentials SET step = 'retired', key_enc = '\\x'::bytea, lease_owner = NULL, lease_until = NULL, updated_at = $1
       WHERE id = $2 AND step = 'retiring' AND lease_owner = $3`,
      [this.now(), id, owner],
    );
  }

  dueOrphanChecks(limit: number): Promise<CredentialRow[]> {
    return this.all(
      `SELECT * FROM credentials WHERE orphan_check_at IS NOT NULL AND orphan_check_at <= $1
         AND (cert_id IS NOT NULL OR step IN ('retiring', 'retired')) ORDER BY orphan_check_at LIMIT $2`,
      [this.now(), limit],
    );
  }

  async clearOrphanCheck(id: number, flaggedAt: number): Promise<void> {
    await this.run('UPDATE credentials SET orphan_check_at = NULL WHERE id = $1 AND orphan_check_at = $2', [id, flaggedAt]);
  }

  async knownCertificateIds(ids: string[]): Promise<Set<string>> {
    const { rows } = await this.db.query<{ cert_id: string }>('SELECT DISTINCT cert_id FROM credentials WHERE cert_id = ANY($1)', [ids]);
    return new Set(rows.map((r) => r.cert_id));
  }

  async setPubkeyHash(id: number, hash: string): Promise<void> {
    await this.run('UPDATE credentials SET pubkey_sha256 = $1 WHERE id = $2', [hash, id]);
  }

  async setNotAfter(id: number, notAfter: number): Promise<void> {
    await this.run('UPDATE credentials SET not_after = $1 WHERE id = $2', [notAfter, id]);
  }

  readyWithoutExpiry(limit: number): Promise<CredentialRow[]> {
    return this.all("SELECT * FROM credentials WHERE step = 'ready' AND not_after IS NULL AND cert_pem IS NOT NULL LIMIT $1", [limit]);
  }

  async expiring(before: number, limit: number, createdBefore = 0): Promise<string[]> {
    const { rows } = await this.db.query<{ imsi: string }>(
      `SELECT c.imsi FROM credentials c JOIN sims s ON s.imsi = c.imsi
       WHERE c.step = 'ready' AND (c.not_after < $1 OR c.created_at < $2) AND s.status = 'active'
         AND NOT EXISTS (SELECT 1 FROM credentials v WHERE v.imsi = c.imsi AND v.step IN ${VENDING_IN})
       ORDER BY c.not_after NULLS FIRST LIMIT $3`,
      [before, createdBefore, limit],
    );
    return rows.map((r) => r.imsi);
  }

  async vendingImsis(): Promise<Array<{ imsi: string; purpose: Purpose }>> {
    return (await this.db.query<{ imsi: string; purpose: Purpose }>(`SELECT imsi, purpose FROM credentials WHERE step IN ${VENDING_IN} ORDER BY id`)).rows;
  }

  async simsWithoutCredentials(): Promise<string[]> {
    const { rows } = await this.db.query<{ imsi: string }>(
      `SELECT s.imsi FROM sims s WHERE s.status = 'active'
         AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.imsi = s.imsi AND c.step = 'ready') ORDER BY s.imsi`,
    );
    return rows.map((r) => r.imsi);
  }

  async sealedKeys(afterId: number, limit: number): Promise<Array<{ id: number; imsi: string; keyEnc: Buffer }>> {
    const { rows } = await this.db.query<{ id: number; imsi: string; key_enc: Buffer }>(
      'SELECT id, imsi, key_enc FROM credentials WHERE id > $1 AND octet_length(key_enc) > 0 ORDER BY id LIMIT $2',
      [afterId, limit],
    );
    return rows.map((r) => ({ id: r.id, imsi: r.imsi, keyEnc: r.key_enc }));
  }

  replaceSealedKey(id: number, was: Buffer, sealed: Buffer): Promise<boolean> {
    return this.run('UPDATE credentials SET key_enc = $1 WHERE id = $2 AND key_enc = $3', [sealed, id, was]);
  }

  async anySealedKey(): Promise<{ imsi: string; keyEnc: Buffer } | undefined> {
    const r = (await this.db.query<{ imsi: string; key_enc: Buffer }>('SELECT imsi, key_enc FROM credentials WHERE octet_length(key_enc) > 0 LIMIT 1')).rows[0];
    return r && { imsi: r.imsi, keyEnc: r.key_enc };
  }
}
