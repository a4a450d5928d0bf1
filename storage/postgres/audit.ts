import type { AuditEvent, AuditFilter, AuditKind, AuditPage, AuditStore } from '../audit.ts';
import type { Queryable } from './connect.ts';
import { Params } from './params.ts';

/** The audit log on PostgreSQL (storage/audit.ts for the rules). */
export class PgAuditLog implements AuditStore {
  constructor(private readonly db: Queryable) {}

  async record(kind: AuditKind, imsi: string | null, detail: Record<string, unknown> = {}): Promise<void> {
    await this.db.query('INSERT INTO audit (at, imsi, kind, detail) VALUES ($1, $2, $3, $4)', [Date.now(), imsi, kind, JSON.stringify(detail)]);
  }

  async query(f: AuditFilter = {}): Promise<AuditPage> {
    const limit = f.limit ?? 100;
    const p = new Params();
    const where: string[] = [];
    if (f.imsi) where.push(`imsi = ${p.add(f.imsi)}`);
    if (f.kinds?.length) where.push(`kind = ANY(${p.add(f.kinds)})`);
    if (f.since !== undefined) where.push(`at >= ${p.add(f.since)}`);
    if (f.until !== undefined) where.push(`at < ${p.add(f.until)}`);
    if (f.before !== undefined) where.push(`id < ${p.add(f.before)}`);
    const { rows } = await this.db.query<Omit<AuditEvent, 'detail'> & { detail: string }>(
      `SELECT id, at, imsi, kind, detail FROM audit ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT ${p.add(limit + 1)}`,
      p.values,
    );
    const items = rows.slice(0, limit).map((r) => ({ ...r, detail: JSON.parse(r.detail) as Record<string, unknown> }));
    return { items, nextBefore: rows.length > limit ? items.at(-1)!.id : null };
  }
}
