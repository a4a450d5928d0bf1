import type { Db } from '../storage/db.ts';

export interface AuditFilter {
  imsi?: string;
  /** One kind or several. */
  kinds?: string[];
  /** ms since epoch, inclusive */
  since?: number;
  /** ms since epoch, exclusive */
  until?: number;
  /** Only events with a smaller id: the next page of a newest-first listing. */
  before?: number;
  limit: number;
}

export interface AuditRow {
  id: number;
  at: number;
  imsi: string | null;
  kind: string;
  detail: Record<string, unknown>;
}

/** Audit events newest first, by SIM, kind and time range; nextBefore pages on. */
export function queryAudit(db: Db, f: AuditFilter): { items: AuditRow[]; nextBefore: number | null } {
  const where: string[] = [];
  const args: unknown[] = [];
  if (f.imsi) (where.push('imsi = ?'), args.push(f.imsi));
  if (f.kinds?.length) (where.push(`kind IN (${f.kinds.map(() => '?').join(', ')})`), args.push(...f.kinds));
  if (f.since !== undefined) (where.push('at >= ?'), args.push(f.since));
  if (f.until !== undefined) (where.push('at < ?'), args.push(f.until));
  if (f.before !== undefined) (where.push('id < ?'), args.push(f.before));
  const rows = db
    .prepare(`SELECT id, at, imsi, kind, detail FROM audit ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT ?`)
    .all(...args, f.limit + 1) as Array<Omit<AuditRow, 'detail'> & { detail: string }>;
  const items = rows.slice(0, f.limit).map((r) => ({ ...r, detail: JSON.parse(r.detail) as Record<string, unknown> }));
  return { items, nextBefore: rows.length > f.limit ? items.at(-1)!.id : null };
}
