import { AuditLog, type AuditKind } from './audit.ts';
import type { Db, OpenOptions } from './db.ts';
import { siblingModule } from '../lib/worker-calls.ts';
import { storeOnThread } from './store-thread.ts';

/** Vending steps in order; a row's `step` is the last one completed. */
export const VENDING_STEPS = ['key', 'csr_sent', 'certificate', 'thing', 'policy'] as const;
export type VendingStep = (typeof VENDING_STEPS)[number];
export type Step = VendingStep | 'ready' | 'retiring' | 'retired';
export type Purpose = 'first' | 'rotation';

const VENDING_IN = `(${VENDING_STEPS.map((s) => `'${s}'`).join(', ')})`;

/** Where a generation stands, as operators see it. */
export type CertificateState = 'vending' | 'ready' | 'retired';

export function certificateState(step: Step): CertificateState {
  if (step === 'ready') return 'ready';
  return (VENDING_STEPS as readonly Step[]).includes(step) ? 'vending' : 'retired';
}

/** One certificate generation of a SIM and where its vending or retirement stands. */
export interface CredentialRow {
  id: number;
  imsi: string;
  thingName: string;
  purpose: Purpose;
  step: Step;
  keyAlg: string;
  keyEnc: Buffer;
  csrPem: string;
  pubkeySha256: string | null;
  csrSentAt: number | null;
  orphanCheckAt: number | null;
  certId: string | null;
  certArn: string | null;
  certPem: string | null;
  notAfter: number | null;
  policyName: string | null;
  retireReason: string | null;
  retireAfter: number | null;
  lastError: string | null;
  attempts: number;
  leaseOwner: string | null;
  leaseUntil: number | null;
  createdAt: number;
  updatedAt: number;
}

/** A credentials row, as both dialects return it. */
export interface CredentialRaw {
  id: number; imsi: string; thing_name: string; purpose: Purpose; step: Step; key_alg: string; key_enc: Buffer; csr_pem: string;
  pubkey_sha256: string | null; csr_sent_at: number | null; orphan_check_at: number | null; cert_id: string | null;
  cert_arn: string | null; cert_pem: string | null; not_after: number | null; policy_name: string | null;
  retire_reason: string | null; retire_after: number | null; last_error: string | null; attempts: number;
  lease_owner: string | null; lease_until: number | null; created_at: number; updated_at: number;
}

export function fromRaw(r: CredentialRaw): CredentialRow {
  return {
    id: r.id, imsi: r.imsi, thingName: r.thing_name, purpose: r.purpose, step: r.step, keyAlg: r.key_alg, keyEnc: r.key_enc,
    csrPem: r.csr_pem, pubkeySha256: r.pubkey_sha256, csrSentAt: r.csr_sent_at, orphanCheckAt: r.orphan_check_at,
    certId: r.cert_id, certArn: r.cert_arn, certPem: r.cert_pem, notAfter: r.not_after, policyName: r.policy_name,
    retireReason: r.retire_reason, retireAfter: r.retire_after, lastError: r.last_error, attempts: r.attempts,
    leaseOwner: r.lease_owner, leaseUntil: r.lease_until, createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

export interface NewKey {
  imsi: string;
  thingName: string;
  purpose: Purpose;
  keyAlg: string;
  keyEnc: Buffer;
  csrPem: string;
  pubkeySha256: string;
}

/** What the admin surface reads about certificates: promise-shaped, like every store admin sees. */
export interface CredentialReads {
  /** SIMs with a certificate in use, and SIMs with one being vended (a SIM rotating counts in both). */
  countByState(): Promise<{ ready: number; vending: number }>;
  /** Every generation of the SIM, oldest first. */
  history(imsi: string): Promise<CredentialRow[]>;
}

/** An audit event written in the same commit as the change it describes. */
export interface AuditEntry {
  kind: AuditKind;
  imsi: string;
  detail: Record<string, unknown>;
}

/** Columns a vending step records with its completion. */
export interface StepFields {
  certId?: string;
  certArn?: string;
  certPem?: string;
  notAfter?: number;
  policyName?: string;
}

/**
 * Device credentials, one row per certificate generation, as vending and the commands see them. Every
 * change made while vending is a compare-and-set on the step and the lease owner, so a process that
 * lost its lease, or a row revoked under it, cannot record anything. Promise-shaped, so a PostgreSQL
 * implementation can stand beside the SQLite one; a step and its audit event are one store call, which
 * each implementation commits together.
 */
export interface CredentialStore {
  byId(id: number): Promise<CredentialRow | undefined>;
  /** The SIM's certificate in use, if any. */
  ready(imsi: string): Promise<CredentialRow | undefined>;
  /** The SIM's generation being vended, if any. */
  vending(imsi: string): Promise<CredentialRow | undefined>;
  /** SIMs with a certificate in use, and SIMs with one being vended (a SIM rotating counts in both). */
  countByState(): Promise<{ ready: number; vending: number }>;
  /** Failed vending attempts in all, and generations whose last failure was IoT Core throttling. */
  failureTally(): Promise<{ attempts: number; throttled: number }>;
  /** Every generation of the SIM, oldest first. */
  history(imsi: string): Promise<CredentialRow[]>;
  /**
   * Stores a fresh sealed key and CSR as a new generation, leased to owner, unless the SIM already has
   * one being vended; a first vend is also refused when the SIM has a certificate in use. The new row, or undefined.
   */
  createGeneration(key: NewKey, owner: string, leaseMs: number): Promise<CredentialRow | undefined>;
  /** Takes the row's lease when free, expired, already owner's, or held by a process isDead says is gone. */
  acquireLease(id: number, owner: string, leaseMs: number, isDead?: (holder: string) => boolean): Promise<boolean>;
  /** Extends owner's lease; false when owner no longer holds it. */
  renewLease(id: number, owner: string, leaseMs: number): Promise<boolean>;
  releaseLease(id: number, owner: string): Promise<void>;
  /** Records that CreateCertificateFromCsr is about to be sent (a repeat send flags an orphan check at checkAt). */
  markCsrSent(id: number, owner: string, checkAt: number): Promise<boolean>;
  /** A certificate may exist in IoT Core for this row that was never recorded: look for it at `at`. */
  flagOrphanCheck(id: number, at: number): Promise<void>;
  /** Moves the row from step `from` to `to` with these column values, only while owner holds it; `audit` is written with it. */
  advance(id: number, owner: string, from: VendingStep, to: VendingStep, fields?: StepFields, audit?: AuditEntry): Promise<boolean>;
  /**
   * Puts the finished generation in use, releases its lease and sets the certificate it replaces (if
   * any) to retire at retireAfter, in one commit with the audit event `audit` describes.
   */
  promote(id: number, owner: string, retireAfter: number, audit?: (previous: CredentialRow | undefined) => AuditEntry): Promise<{ ok: boolean; previous?: CredentialRow }>;
  recordFailure(id: number, error: string): Promise<void>;
  /** Sends every live generation of the SIM (in use or being vended) to retirement. */
  markRetiring(imsi: string, reason: string, retireAfter: number): Promise<CredentialRow[]>;
  /** Lets a retirement go ahead now. */
  retireNow(id: number): Promise<void>;
  dueRetirements(limit: number): Promise<CredentialRow[]>;
  /** Done: the certificate is deactivated and detached in IoT Core; the private key is wiped. */
  markRetired(id: number, owner: string): Promise<boolean>;
  /** Rows whose orphan check is due and whose own certificate request is over. */
  dueOrphanChecks(limit: number): Promise<CredentialRow[]>;
  /** Clears a check, unless it was flagged again (later) meanwhile. */
  clearOrphanCheck(id: number, flaggedAt: number): Promise<void>;
  /** Which of these certificate ids simbridge has recorded (in any generation of any SIM). */
  knownCertificateIds(ids: string[]): Promise<Set<string>>;
  setPubkeyHash(id: number, hash: string): Promise<void>;
  setNotAfter(id: number, notAfter: number): Promise<void>;
  /** Certificates in use whose expiry is not known yet. */
  readyWithoutExpiry(limit: number): Promise<CredentialRow[]>;
  /** IMSIs of active SIMs whose certificate in use expires before `before` and that are not being re-vended. */
  expiring(before: number, limit: number, createdBefore?: number): Promise<string[]>;
  /** IMSIs with a generation being vended (to resume after a restart). */
  vendingImsis(): Promise<Array<{ imsi: string; purpose: Purpose }>>;
  /** Active SIMs without a certificate in use, for bulk pre-vending. */
  simsWithoutCredentials(): Promise<string[]>;
  /** Stored private keys by id, after `afterId` (a master-key rotation walks them in batches). */
  sealedKeys(afterId: number, limit: number): Promise<Array<{ id: number; imsi: string; keyEnc: Buffer }>>;
  /** Replaces a sealed key only if it is still `was`; false when it changed meanwhile. */
  replaceSealedKey(id: number, was: Buffer, sealed: Buffer): Promise<boolean>;
  /** Any stored private key, to tell whether a master key opens this database's keys. */
  anySealedKey(): Promise<{ imsi: string; keyEnc: Buffer } | undefined>;
}

export const CREDENTIAL_STORE_METHODS = [
  'byId', 'ready', 'vending', 'countByState', 'failureTally', 'history', 'createGeneration', 'acquireLease', 'renewLease',
  'releaseLease', 'markCsrSent', 'flagOrphanCheck', 'advance', 'promote', 'recordFailure', 'markRetiring', 'retireNow',
  'dueRetirements', 'markRetired', 'dueOrphanChecks', 'clearOrphanCheck', 'knownCertificateIds', 'setPubkeyHash',
  'setNotAfter', 'readyWithoutExpiry', 'expiring', 'vendingImsis', 'simsWithoutCredentials', 'sealedKeys',
  'replaceSealedKey', 'anySealedKey',
] as const satisfies ReadonlyArray<keyof CredentialStore>;

/** Methods that take a function (which cannot cross to a thread): they stay on the caller's connection. */
const WITH_CALLBACKS = ['acquireLease', 'promote'] as const satisfies ReadonlyArray<(typeof CREDENTIAL_STORE_METHODS)[number]>;

/**
 * The credentials table on a thread of its own (storage/credentials-thread.ts), over the database file,
 * but for the methods that take a callback, which run on `local`: the gateway's vending commits a few
 * times per SIM, and each commit waits for the disk.
 */
export function credentialsOnThread(db: OpenOptions, local: CredentialStore): CredentialStore & { stop(): Promise<void> } {
  const onThread = CREDENTIAL_STORE_METHODS.filter((m) => !(WITH_CALLBACKS as readonly string[]).includes(m));
  const threaded = storeOnThread<SqliteCredentialStore, (typeof onThread)[number]>(siblingModule(import.meta.url, 'credentials-thread'), db, onThread);
  return { ...threaded, acquireLease: local.acquireLease, promote: local.promote };
}

/** The SQLite credentials table (synchronous; the rest of the code sees it as a CredentialStore). */
export class SqliteCredentialStore {
  private readonly byIdStmt;
  private readonly readyStmt;
  private readonly audit: AuditLog;

  constructor(private readonly db: Db, private readonly now: () => number = Date.now) {
    this.byIdStmt = db.prepare<[number], CredentialRaw>('SELECT * FROM credentials WHERE id = ?');
    this.readyStmt = db.prepare<[string], CredentialRaw>("SELECT * FROM credentials WHERE imsi = ? AND step = 'ready'");
    this.audit = new AuditLog(db);
  }

  byId(id: number): CredentialRow | undefined {
    const r = this.byIdStmt.get(id);
    return r && fromRaw(r);
  }

  /** The SIM's certificate in use, if any. */
  ready(imsi: string): CredentialRow | undefined {
    const r = this.readyStmt.get(imsi);
    return r && fromRaw(r);
  }

  /** The SIM's generation being vended, if any. */
  vending(imsi: string): CredentialRow | undefined {
    const r = this.db.prepare<[string], CredentialRaw>(`SELECT * FROM credentials WHERE imsi = ? AND step IN ${VENDING_IN}`).get(imsi);
    return r && fromRaw(r);
  }

  /** SIMs with a certificate in use, and SIMs with one being vended (a SIM rotating counts in both). */
  countByState(): { ready: number; vending: number } {
    return this.db
      .prepare(
        `SELECT count(DISTINCT CASE WHEN step = 'ready' THEN imsi END) AS ready,
                count(DISTINCT CASE WHEN step IN ${VENDING_IN} THEN imsi END) AS vending
         FROM credentials`,
      )
      .get() as { ready: number; vending: number };
  }

  /** Failed vending attempts in all, and generations whose last failure was IoT Core throttling (the vending bench). */
  failureTally(): { attempts: number; throttled: number } {
    return this.db
      .prepare("SELECT coalesce(sum(attempts), 0) AS attempts, count(CASE WHEN last_error LIKE '%Throttl%' THEN 1 END) AS throttled FROM credentials")
      .get() as { attempts: number; throttled: number };
  }

  /** Every generation of the SIM, oldest first. */
  history(imsi: string): CredentialRow[] {
    return this.db.prepare<[string], CredentialRaw>('SELECT * FROM credentials WHERE imsi = ? ORDER BY id').all(imsi).map(fromRaw);
  }

  /**
   * Stores a fresh sealed key and CSR as a new generation, leased to owner, unless the SIM already has one
   * being vended (the partial unique index decides between racing processes). A first vend is also refused
   * when the SIM already has a certificate in use. Returns the new row, or undefined.
   */
  createGeneration(key: NewKey, owner: string, leaseMs: number): CredentialRow | undefined {
    const now = this.now();
    return this.db.transaction(() => {
      if (key.purpose === 'first' && this.readyStmt.get(key.imsi)) return undefined;
      const info = this.db
        .prepare(
          `INSERT INTO credentials (imsi, thing_name, purpose, step, key_alg, key_enc, csr_pem, pubkey_sha256, lease_owner, lease_until, created_at, updated_at)
           VALUES (?, ?, ?, 'key', ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
        )
        .run(key.imsi, key.thingName, key.purpose, key.keyAlg, key.keyEnc, key.csrPem, key.pubkeySha256, owner, now + leaseMs, now, now);
      return info.changes === 1 ? this.byId(Number(info.lastInsertRowid)) : undefined;
    }).immediate();
  }

  /**
   * Takes the row's lease for owner when it is free, expired, already owner's, or held by a process
   * isDead says is gone (a crashed holder on this host is taken over at once instead of waited out).
   */
  acquireLease(id: number, owner: string, leaseMs: number, isDead: (holder: string) => boolean = () => false): boolean {
    const now = this.now();
    const holder = this.db.prepare<[number], string | null>('SELECT lease_owner FROM credentials WHERE id = ?').pluck().get(id);
    const takeOver = holder && holder !== owner && isDead(holder) ? holder : null;
    return (
      this.db
        .prepare(
          `UPDATE credentials SET lease_owner = ?, lease_until = ?
           WHERE id = ? AND (lease_owner IS NULL OR lease_owner = ? OR lease_owner = ? OR lease_until < ?)`,
        )
        .run(owner, now + leaseMs, id, owner, takeOver, now).changes === 1
    );
  }

  /** Extends owner's lease; false when owner no longer holds it. */
  renewLease(id: number, owner: string, leaseMs: number): boolean {
    return this.db.prepare('UPDATE credentials SET lease_until = ? WHERE id = ? AND lease_owner = ?').run(this.now() + leaseMs, id, owner).changes === 1;
  }

  releaseLease(id: number, owner: string): void {
    this.db.prepare('UPDATE credentials SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?').run(id, owner);
  }

  /**
   * Records that CreateCertificateFromCsr is about to be sent. The first send time is kept: the orphan
   * scan must reach back to it. A row already at csr_sent had a send whose answer was never recorded
   * (crash, timeout): it is flagged for an orphan check.
   */
  markCsrSent(id: number, owner: string, checkAt: number): boolean {
    const now = this.now();
    return (
      this.db
        .prepare(
          `UPDATE credentials SET
             orphan_check_at = CASE WHEN step = 'csr_sent' THEN max(coalesce(orphan_check_at, 0), ?) ELSE orphan_check_at END,
             step = 'csr_sent', csr_sent_at = coalesce(csr_sent_at, ?), updated_at = ?
           WHERE id = ? AND step IN ('key', 'csr_sent') AND lease_owner = ?`,
        )
        .run(checkAt, now, now, id, owner).changes === 1
    );
  }

  /**
   * A certificate may exist in IoT Core for this row that was never recorded: look for it at `at` (or
   * later, if already flagged later: one scan from the first send covers every send before it).
   */
  flagOrphanCheck(id: number, at: number): void {
    this.db.prepare('UPDATE credentials SET orphan_check_at = max(coalesce(orphan_check_at, 0), ?) WHERE id = ?').run(at, id);
  }

  /** Moves the row from step `from` to `to` with the given column values, only while owner holds it; `audit` in the same commit. */
  advance(id: number, owner: string, from: VendingStep, to: VendingStep, fields: StepFields = {}, audit?: AuditEntry): boolean {
    const move = () =>
      this.db
        .prepare(
          `UPDATE credentials SET step = ?, cert_id = coalesce(?, cert_id), cert_arn = coalesce(?, cert_arn), cert_pem = coalesce(?, cert_pem),
             not_after = coalesce(?, not_after), policy_name = coalesce(?, policy_name), last_error = NULL, updated_at = ?
           WHERE id = ? AND step = ? AND lease_owner = ?`,
        )
        .run(to, fields.certId ?? null, fields.certArn ?? null, fields.certPem ?? null, fields.notAfter ?? null, fields.policyName ?? null, this.now(), id, from, owner)
        .changes === 1;
    if (!audit) return move();
    // One commit (one fsync) for the step and its audit row.
    return this.db
      .transaction(() => {
        const ok = move();
        if (ok) this.audit.record(audit.kind, audit.imsi, audit.detail);
        return ok;
      })
      .immediate();
  }

  /**
   * Puts the finished generation in use and releases its lease. The certificate it replaces, if any (a
   * rotation), is set to retire at retireAfter. One transaction: the SIM never has zero or two
   * certificates in use.
   */
  promote(id: number, owner: string, retireAfter: number, audit?: (previous: CredentialRow | undefined) => AuditEntry): { ok: boolean; previous?: CredentialRow } {
    const now = this.now();
    return this.db.transaction(() => {
      const row = this.byId(id);
      if (!row || row.step !== 'policy' || row.leaseOwner !== owner) return { ok: false };
      const previous = this.ready(row.imsi);
      if (previous) {
        this.db
          .prepare("UPDATE credentials SET step = 'retiring', retire_reason = 'rotated', retire_after = ?, updated_at = ? WHERE id = ?")
          .run(retireAfter, now, previous.id);
      }
      this.db
        .prepare("UPDATE credentials SET step = 'ready', last_error = NULL, lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?")
        .run(now, id);
      if (audit) {
        const entry = audit(previous);
        this.audit.record(entry.kind, entry.imsi, entry.detail);
      }
      return { ok: true, previous: previous && this.byId(previous.id) };
    }).immediate();
  }

  recordFailure(id: number, error: string): void {
    this.db.prepare('UPDATE credentials SET last_error = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?').run(error, this.now(), id);
  }

  /** Sends every live generation of the SIM (in use or being vended) to retirement. */
  markRetiring(imsi: string, reason: string, retireAfter: number): CredentialRow[] {
    const now = this.now();
    return this.db.transaction(() => {
      const rows = this.db
        .prepare<[string], CredentialRaw>(`SELECT * FROM credentials WHERE imsi = ? AND (step = 'ready' OR step IN ${VENDING_IN})`)
        .all(imsi);
      const update = this.db.prepare("UPDATE credentials SET step = 'retiring', retire_reason = ?, retire_after = ?, updated_at = ? WHERE id = ?");
      for (const r of rows) update.run(reason, retireAfter, now, r.id);
      return rows.map((r) => this.byId(r.id)!);
    }).immediate();
  }

  /** Lets a retirement go ahead now (its device session has moved to the new certificate). */
  retireNow(id: number): void {
    this.db.prepare("UPDATE credentials SET retire_after = ? WHERE id = ? AND step = 'retiring'").run(this.now(), id);
  }

  dueRetirements(limit: number): CredentialRow[] {
    return this.db
      .prepare<[number, number], CredentialRaw>("SELECT * FROM credentials WHERE step = 'retiring' AND retire_after <= ? ORDER BY retire_after LIMIT ?")
      .all(this.now(), limit)
      .map(fromRaw);
  }

  /** Done: the certificate is deactivated and detached in IoT Core. The private key is wiped. */
  markRetired(id: number, owner: string): boolean {
    return (
      this.db
        .prepare(
          `UPDATE credentials SET step = 'retired', key_enc = x'', lease_owner = NULL, lease_until = NULL, updated_at = ?
           WHERE id = ? AND step = 'retiring' AND lease_owner = ?`,
        )
        .run(this.now(), id, owner).changes === 1
    );
  }

  /**
   * Rows whose orphan check is due and whose own certificate request is over (its certificate is
   * recorded, or the row is being retired): a scan now cannot mistake an answer still on its way to us
   * for an orphan.
   */
  dueOrphanChecks(limit: number): CredentialRow[] {
    return this.db
      .prepare<[number, number], CredentialRaw>(
        `SELECT * FROM credentials WHERE orphan_check_at IS NOT NULL AND orphan_check_at <= ?
           AND (cert_id IS NOT NULL OR step IN ('retiring', 'retired')) ORDER BY orphan_check_at LIMIT ?`,
      )
      .all(this.now(), limit)
      .map(fromRaw);
  }

  /** Clears a check, unless it was flagged again (later) meanwhile. */
  clearOrphanCheck(id: number, flaggedAt: number): void {
    this.db.prepare('UPDATE credentials SET orphan_check_at = NULL WHERE id = ? AND orphan_check_at = ?').run(id, flaggedAt);
  }

  /** Which of these certificate ids simbridge has recorded (in any generation of any SIM). */
  knownCertificateIds(ids: string[]): Set<string> {
    const known = new Set<string>();
    const stmt = this.db.prepare<[string], string>('SELECT cert_id FROM credentials WHERE cert_id = ?').pluck();
    for (const id of ids) if (stmt.get(id)) known.add(id);
    return known;
  }

  setPubkeyHash(id: number, hash: string): void {
    this.db.prepare('UPDATE credentials SET pubkey_sha256 = ? WHERE id = ?').run(hash, id);
  }

  setNotAfter(id: number, notAfter: number): void {
    this.db.prepare('UPDATE credentials SET not_after = ? WHERE id = ?').run(notAfter, id);
  }

  /** Certificates in use whose expiry is not known yet (rows from before it was recorded). */
  readyWithoutExpiry(limit: number): CredentialRow[] {
    return this.db
      .prepare<[number], CredentialRaw>("SELECT * FROM credentials WHERE step = 'ready' AND not_after IS NULL AND cert_pem IS NOT NULL LIMIT ?")
      .all(limit)
      .map(fromRaw);
  }

  /** IMSIs of active SIMs whose certificate in use expires before `before` and that are not being re-vended. */
  expiring(before: number, limit: number, createdBefore = 0): string[] {
    return this.db
      .prepare<[number, number, number], string>(
        `SELECT c.imsi FROM credentials c JOIN sims s ON s.imsi = c.imsi
         WHERE c.step = 'ready' AND (c.not_after < ? OR c.created_at < ?) AND s.status = 'active'
           AND NOT EXISTS (SELECT 1 FROM credentials v WHERE v.imsi = c.imsi AND v.step IN ${VENDING_IN})
         ORDER BY c.not_after LIMIT ?`,
      )
      .pluck()
      .all(before, createdBefore, limit);
  }

  /** IMSIs with a generation being vended (to resume after a restart). */
  vendingImsis(): Array<{ imsi: string; purpose: Purpose }> {
    return this.db.prepare<[], { imsi: string; purpose: Purpose }>(`SELECT imsi, purpose FROM credentials WHERE step IN ${VENDING_IN} ORDER BY id`).all();
  }

  /** Active SIMs without a certificate in use, for bulk pre-vending. */
  simsWithoutCredentials(): string[] {
    return this.db
      .prepare<[], string>(
        `SELECT s.imsi FROM sims s WHERE s.status = 'active'
           AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.imsi = s.imsi AND c.step = 'ready') ORDER BY s.imsi`,
      )
      .pluck()
      .all();
  }

  /** Stored private keys by id, after `afterId` (a master-key rotation walks them in batches). */
  sealedKeys(afterId: number, limit: number): Array<{ id: number; imsi: string; keyEnc: Buffer }> {
    return this.db
      .prepare<[number, number], { id: number; imsi: string; key_enc: Buffer }>('SELECT id, imsi, key_enc FROM credentials WHERE id > ? AND length(key_enc) > 0 ORDER BY id LIMIT ?')
      .all(afterId, limit)
      .map((r) => ({ id: r.id, imsi: r.imsi, keyEnc: r.key_enc }));
  }

  /** Replaces a sealed key only if it is still `was`; false when it changed meanwhile. */
  replaceSealedKey(id: number, was: Buffer, sealed: Buffer): boolean {
    return this.db.prepare('UPDATE credentials SET key_enc = ? WHERE id = ? AND key_enc = ?').run(sealed, id, was).changes === 1;
  }

  /** Any stored private key, to tell whether a master key opens this database's keys. */
  anySealedKey(): { imsi: string; keyEnc: Buffer } | undefined {
    const r = this.db
      .prepare<[], { imsi: string; key_enc: Buffer }>('SELECT imsi, key_enc FROM credentials WHERE length(key_enc) > 0 LIMIT 1')
      .get();
    return r && { imsi: r.imsi, keyEnc: r.key_enc };
  }
}
