import type { Db } from './db.ts';

/** What the retention job ages out. */
export type RetentionTarget = 'audit' | 'deadLetters' | 'networkSessions';

interface Rule {
  table: string;
  /** Primary key used to delete in chunks (network_sessions is WITHOUT ROWID). */
  key: string;
  /** Column holding the time the row became eligible (ms since epoch). */
  column: string;
}

const RULES: Record<RetentionTarget, Rule> = {
  audit: { table: 'audit', key: 'id', column: 'at' },
  deadLetters: { table: 'dead_letters', key: 'id', column: 'failed_at' },
  // Live sessions are never touched: only rows the network has ended (ended_at set) age out. A schema
  // without ended_at deletes sessions as they end, and the rule has nothing to do.
  networkSessions: { table: 'network_sessions', key: 'ip', column: 'ended_at' },
};

/** Where a target's rows live and which column ages them (the PostgreSQL store reads the same rules). */
export const retentionRule = (target: RetentionTarget): Readonly<Rule> => RULES[target];

/** Table name of a target, for metrics and logs. */
export const retentionTable = (target: RetentionTarget): string => RULES[target].table;

/** Deletes rows past their age, a bounded chunk at a time (the caller paces the chunks). */
export interface RetentionStore {
  /** Deletes at most `limit` rows of the target that became eligible before `cutoff`; resolves with how many. */
  purgeBefore(target: RetentionTarget, cutoff: number, limit: number): Promise<number>;
}

export class SqliteRetentionStore {
  /** Prepared per target on first use; null when the schema has no such column (nothing to age out). */
  private readonly deletes = new Map<RetentionTarget, { run(cutoff: number, limit: number): { changes: number } } | null>();

  constructor(private readonly db: Db) {}

  /** Deletes at most `limit` rows of the target that became eligible before `cutoff`; returns how many. */
  purgeBefore(target: RetentionTarget, cutoff: number, limit: number): number {
    if (!this.db.open) return 0;
    if (!this.deletes.has(target)) {
      const { table, key, column } = RULES[target];
      this.deletes.set(
        target,
        this.hasColumn(table, column)
          ? this.db.prepare(`DELETE FROM ${table} WHERE ${key} IN (SELECT ${key} FROM ${table} WHERE ${column} IS NOT NULL AND ${column} < ? LIMIT ?)`)
          : null,
      );
    }
    return this.deletes.get(target)?.run(cutoff, limit).changes ?? 0;
  }

  private hasColumn(table: string, column: string): boolean {
    return (this.db.prepare('SELECT count(*) FROM pragma_table_info(?) WHERE name = ?').pluck().get(table, column) as number) > 0;
  }
}
