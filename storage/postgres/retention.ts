import { retentionRule, type RetentionStore, type RetentionTarget } from '../retention.ts';
import type { Queryable } from './connect.ts';
import { changed } from './params.ts';

/** Ages rows out a bounded chunk at a time, as storage/retention.ts does on SQLite. */
export class PgRetentionStore implements RetentionStore {
  /** Per target: whether the schema has its age column (none: nothing to age out). */
  private readonly present = new Map<RetentionTarget, boolean>();

  constructor(private readonly db: Queryable) {}

  async purgeBefore(target: RetentionTarget, cutoff: number, limit: number): Promise<number> {
    const { table, key, column } = retentionRule(target);
    if (!this.present.has(target)) {
      const { rows } = await this.db.query(
        'SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2',
        [table, column],
      );
      this.present.set(target, rows.length > 0);
    }
    if (!this.present.get(target)) return 0;
    return changed(
      await this.db.query(
        `DELETE FROM ${table} WHERE ${key} IN (SELECT ${key} FROM ${table} WHERE ${column} IS NOT NULL AND ${column} < $1 LIMIT $2)`,
        [cutoff, limit],
      ),
    );
  }
}
