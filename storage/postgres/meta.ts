import type { MetaStore } from '../meta.ts';
import type { Queryable } from './connect.ts';

export class PgMetaStore implements MetaStore {
  constructor(private readonly db: Queryable) {}

  async get(key: string): Promise<Buffer | undefined> {
    const { rows } = await this.db.query<{ value: Buffer }>('SELECT value FROM meta WHERE key = $1', [key]);
    return rows[0]?.value;
  }

  async put(key: string, value: Buffer): Promise<void> {
    await this.db.query('INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  async putIfAbsent(key: string, value: Buffer): Promise<void> {
    await this.db.query('INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING', [key, value]);
  }
}
