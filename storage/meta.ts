import type { Db } from './db.ts';

/** Small facts about this database, by key (such as the master-key check value). */
export interface MetaStore {
  get(key: string): Promise<Buffer | undefined>;
  /** Stores the value unless the key already has one (another process may have written it first). */
  putIfAbsent(key: string, value: Buffer): Promise<void>;
  /** Stores the value, replacing what the key held. */
  put(key: string, value: Buffer): Promise<void>;
}

export class SqliteMetaStore {
  constructor(private readonly db: Db) {}

  get(key: string): Buffer | undefined {
    const row = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: Buffer } | undefined;
    return row?.value;
  }

  /** Stores the value, replacing what the key held. */
  put(key: string, value: Buffer): void {
    this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  /** Stores the value unless the key already has one (another process may have written it first). */
  putIfAbsent(key: string, value: Buffer): void {
    this.db.prepare('INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)').run(key, value);
  }
}
