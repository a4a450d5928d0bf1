import type { Db } from './db.ts';
import { eventsTapped, queueEvent } from './events.ts';

/** Every kind of audit event, one list for every writer and reader. */
export const AUDIT_KINDS = [
  // A device refused at admission, under the refusal's reason (bridge/identity/source.ts RefusalReason).
  'invalid_imsi',
  'invalid_imei',
  'unidentified',
  'unknown_sim',
  'sim_suspended',
  'sim_terminated',
  'imei_mismatch',
  'imei_not_bound',
  'imei_unknown',
  'bad_secret',
  'claim_mismatch',
  // A device held to the gateway's limits.
  'sim_connection_limit',
  'retain_not_supported',
  // The registry and the IMEI lock.
  'sim_registered',
  'sim_created',
  'sim_updated',
  'sim_status_changed',
  'sims_imported',
  'imei_bound',
  'imei_unbound',
  'secret_set',
  'secret_cleared',
  // What IoT Core refused: a device's subscription (its policy), a shadow report.
  'subscription_refused',
  'shadow_update_rejected',
  'job_update_refused',
  'file_refused',
  // Messages that will never be delivered.
  'message_dropped',
  'dead_letter',
  'downlink_dropped',
  // Certificates.
  'certificate_created',
  'vended',
  'credentials_rotated',
  'credentials_revoked',
  'certificate_retired',
  'orphan_certificate_disposed',
  'revoke_failed',
  'revoke_unavailable',
  // The admin API.
  'admin_auth_failed',
  'admin_auth_throttled',
] as const;

export type AuditKind = (typeof AUDIT_KINDS)[number];

const knownKinds: ReadonlySet<string> = new Set(AUDIT_KINDS);
export const isAuditKind = (s: string): s is AuditKind => knownKinds.has(s);

export interface AuditEvent {
  id: number;
  at: number;
  imsi: string | null;
  kind: AuditKind;
  detail: Record<string, unknown>;
}

/** Which events to read, newest first; every condition given must hold. */
export interface AuditFilter {
  imsi?: string;
  /** One kind or several. */
  kinds?: AuditKind[];
  /** ms since epoch, inclusive */
  since?: number;
  /** ms since epoch, exclusive */
  until?: number;
  /** Only events with a smaller id: the next page of a newest-first listing. */
  before?: number;
  /** Default 100. */
  limit?: number;
}

export interface AuditPage {
  items: AuditEvent[];
  /** Pass as `before` for the next (older) page; null when there is none. */
  nextBefore: number | null;
}

/** Append-only log of events that concern a SIM (refusals, registrations, vending, lock changes). */
export interface AuditStore {
  record(kind: AuditKind, imsi: string | null, detail?: Record<string, unknown>): Promise<void>;
  /** Events newest first, by SIM, kind and time range; nextBefore pages on. */
  query(filter?: AuditFilter): Promise<AuditPage>;
}

/** The SQLite audit log (synchronous; the rest of the code sees it as an AuditStore). */
export class AuditLog {
  private readonly insertStmt;

  constructor(private readonly db: Db) {
    this.insertStmt = db.prepare('INSERT INTO audit (at, imsi, kind, detail) VALUES (?, ?, ?, ?)');
  }

  record(kind: AuditKind, imsi: string | null, detail: Record<string, unknown> = {}): void {
    const at = Date.now();
    if (!eventsTapped(this.db)) return void this.insertStmt.run(at, imsi, kind, JSON.stringify(detail));
    // The fleet event an audit row stands for is written in the same commit (a savepoint when the
    // caller's change already holds a transaction): never one without the other.
    this.db.transaction(() => {
      this.insertStmt.run(at, imsi, kind, JSON.stringify(detail));
      queueEvent(this.db, { source: 'audit', kind, imsi, detail, at });
    })();
  }

  /** Events newest first, by SIM, kind and time range; nextBefore pages on. */
  query(f: AuditFilter = {}): AuditPage {
    const limit = f.limit ?? 100;
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.imsi) (where.push('imsi = ?'), args.push(f.imsi));
    if (f.kinds?.length) (where.push(`kind IN (${f.kinds.map(() => '?').join(', ')})`), args.push(...f.kinds));
    if (f.since !== undefined) (where.push('at >= ?'), args.push(f.since));
    if (f.until !== undefined) (where.push('at < ?'), args.push(f.until));
    if (f.before !== undefined) (where.push('id < ?'), args.push(f.before));
    const rows = this.db
      .prepare(`SELECT id, at, imsi, kind, detail FROM audit ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT ?`)
      .all(...args, limit + 1) as Array<Omit<AuditEvent, 'detail'> & { detail: string }>;
    const items = rows.slice(0, limit).map((r) => ({ ...r, detail: JSON.parse(r.detail) as Record<string, unknown> }));
    return { items, nextBefore: rows.length > limit ? items.at(-1)!.id : null };
  }
}
