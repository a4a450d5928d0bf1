import type { Db } from './db.ts';

export interface AuditEvent {
  id: number;
  at: number;
  imsi: string | null;
  kind: string;
  detail: Record<string, unknown>;
}

/** Append-only log of events that concern a SIM (refusals, registrations, vending, lock changes). */
export class AuditLog {
  private readonly insertStmt;

  constructor(private readonly db: Db) {
    this.insertStmt = db.prepare('INSERT INTO audit (at, imsi, kind, detail) VALUES (?, ?, ?, ?)');
  }

  record(kind: string, imsi: string | null, detail: Record<string, unknown> = {}): void {
    this.insertStmt.run(Date.now(), imsi, kind, JSON.stringify(detail));
  }

  query(filter: { imsi?: string; kind?: string; since?: number; limit?: number } = {}): AuditEvent[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.imsi) (where.push('imsi = ?'), args.push(filter.imsi));
    if (filter.kind) (where.push('kind = ?'), args.push(filter.kind));
    if (filter.since) (where.push('at >= ?'), args.push(filter.since));
    const sql = `SELECT * FROM audit ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT ?`;
    const rows = this.db.prepare(sql).all(...args, filter.limit ?? 100) as Array<Omit<AuditEvent, 'detail'> & { detail: string }>;
    return rows.map((r) => ({ ...r, detail: JSON.parse(r.detail) as Record<string, unknown> }));
  }
}
