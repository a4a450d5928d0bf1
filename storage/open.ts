import { join } from 'node:path';
import { openDatabase, type Db } from './db.ts';
import { sqliteStores, type Stores } from './index.ts';
import type { Pool } from './postgres/connect.ts';
import type { PostgresStores } from './postgres/index.ts';

/** Where state lives: the `storage` section of the configuration, and the data directory. */
export interface StorageOptions {
  dataDir: string;
  /** postgres://…: PostgreSQL; absent: SQLite in dataDir. */
  url?: string;
  synchronous: 'full' | 'normal';
  cacheMb?: number;
  maxConnections?: number;
  connectTimeoutMs?: number;
  /** How long stopped RADIUS sessions are remembered. */
  replayWindowMs?: number;
}

export type OpenedStores =
  | { dialect: 'sqlite'; db: Db; stores: Stores; close(): Promise<void> }
  | { dialect: 'postgres'; pool: Pool; stores: PostgresStores; close(): Promise<void> };

/**
 * Opens the database `storage` names, migrated, with every store over it: SQLite in the data directory by
 * default, PostgreSQL when a url is given. A PostgreSQL server that cannot be reached fails with one line
 * naming its host (StorageUnavailableError: the CLI exits 69).
 */
export async function openStores(opts: StorageOptions): Promise<OpenedStores> {
  if (opts.url) {
    // Loaded only when asked for: a node on SQLite does not load the PostgreSQL client.
    const [{ openPostgres }, { postgresStores }] = await Promise.all([import('./postgres/connect.ts'), import('./postgres/index.ts')]);
    const pool = await openPostgres({ url: opts.url, maxConnections: opts.maxConnections, connectTimeoutMs: opts.connectTimeoutMs });
    return { dialect: 'postgres', pool, stores: postgresStores(pool, Date.now, { replayWindowMs: opts.replayWindowMs }), close: () => pool.end() };
  }
  const db = openDatabase({ file: join(opts.dataDir, 'simbridge.db'), synchronous: opts.synchronous, cacheMb: opts.cacheMb });
  return { dialect: 'sqlite', db, stores: sqliteStores(db, Date.now, { replayWindowMs: opts.replayWindowMs }), close: async () => void db.close() };
}
