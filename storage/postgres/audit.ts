import type { AuditEvent, AuditFilter, AuditKind, AuditPage, AuditStore } from '../audit.ts';
import { transaction, type Pool, type Queryable } from './connect.ts';
import { auditFacts, insertPgEvents, renderPgEvents } from './events.ts';
import { Params } from './params.ts';

/** The audit log on PostgreSQL (storage/audit.ts for the rules). */
export class PgAuditLog implements AuditStore {
  constructor(private readonly pool: Pool) {}

  async record(kind: AuditKind, imsi: string | null, detail: Record<string, unknown> = {}): Promise<void> {
    const at = Date.now();
    const events = renderPgEvents(this.pool, auditFacts(kind, imsi, detail, at));
    if (!events) return insertAudit(this.pool, at, imsi, kind, detail);
    // The fleet event an audit row stands for is written in the same commit: never one without the other.
    await transaction(this.pool, async (c) => {
      await insertAudit(c, at, imsi, kind, detail);
      await insertPgEvents(c, events);
    });
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
    const { rows } = await this.pool.query<Omit<AuditEvent, 'detail'> & { detail: string }>(
      `SELECT id, at, imsi, kind, detail FROM audit ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT ${p.add(limit + 1)}`,
      p.values,
    );
    const items = rows.slice(0, limit).map((r) => ({ ...r, detail: JSON.parse(r.detail) as Record<string, unknown> }));
    return { items, nextBefore: rows.length > limit ? items.at(-1)!.id : null };
  }
}

/** One audit row, on the pool or inside a caller's transaction. */
export async function insertAudit(db: Queryable, at: number, imsi: string | null, kind: AuditKind, detail: Record<string, unknown>): Promise<void> {
  await db.query('INSERT INTO audit (at, imsi, kind, detail) VALUES ($1, $2, $3, $4)', [at, imsi, kind, JSON.stringify(detail)]);
}
