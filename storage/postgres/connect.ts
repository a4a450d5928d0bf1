import { readFileSync } from 'node:fs';
import pg from 'pg';
import { StorageError, StorageUnavailableError } from '../files.ts';
import { migrationFiles } from '../migration-files.ts';

export type Pool = pg.Pool;
/** A pool or one of its connections (inside a transaction): whatever runs a query. */
export type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

// BIGINT (times in ms, row ids) and NUMERIC (sums) come back as JavaScript numbers, as from SQLite:
// every value stored is below 2^53.
const INT8 = 20;
const NUMERIC = 1700;
/** The type parsers every connection of a node uses (the pool's and the change feed's). */
export const pgTypes = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8 || oid === NUMERIC ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

export interface PostgresOptions {
  /** postgres://user:password@host:port/database */
  url: string;
  /** Connections in the pool. */
  maxConnections?: number;
  /** How long to wait for a connection (at start, and after the server was lost), ms. */
  connectTimeoutMs?: number;
}

/** Host and port of a connection string, for messages (never the password). */
export function describeServer(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname || 'localhost'}:${u.port || 5432}`;
  } catch {
    return 'an unparsable storage.url';
  }
}

/**
 * Opens a pool on the database and applies pending migrations (storage/migrations/postgres). Every
 * connection commits with synchronous_commit on, whatever the server's default: a device is acknowledged
 * only for what is on disk. Throws, in one line naming the server, a StorageUnavailableError when it cannot
be reached and a StorageError when the migrations fail.
 */
export async function openPostgres(opts: PostgresOptions): Promise<Pool> {
  const pool = new pg.Pool({
    connectionString: opts.url,
    max: opts.maxConnections ?? 10,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 10_000,
    options: '-c synchronous_commit=on',
    types: pgTypes,
  });
  // An idle connection the server drops (restart, network) is replaced on next use, not a crash.
  pool.on('error', () => undefined);
  const server = describeServer(opts.url);
  const fail = async (Kind: typeof StorageError, err: unknown) => {
    await pool.end().catch(() => undefined);
    const why = (err as Error).message || (err as NodeJS.ErrnoException).code || String(err);
    return new Kind(`cannot open PostgreSQL at ${server}: ${why.replace(/\s+/g, ' ')}`);
  };
  try {
    (await pool.connect()).release();
  } catch (err) {
    throw await fail(StorageUnavailableError, err);
  }
  try {
    await migrate(pool);
  } catch (err) {
    throw await fail(StorageError, err);
  }
  return pool;
}

// Several nodes starting at once: one migrates, the others wait on this lock and find nothing left to do.
const MIGRATION_LOCK = 0x5173_6272;

async function migrate(pool: Pool): Promise<void> {
  await transaction(pool, async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)');
    const applied = new Set((await c.query<{ version: number }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version));
    for (const { version, name, path } of migrationFiles('postgres')) {
      if (applied.has(version)) continue;
      await c.query(readFileSync(path, 'utf8'));
      await c.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [version, name, Date.now()]);
    }
  });
}

/** Runs fn on one connection inside BEGIN … COMMIT, rolling back when it throws. */
export async function transaction<T>(pool: Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  // A checked-out connection whose server goes away emits 'error' (node-postgres): without a listener that
  // would be an uncaught exception. The query waiting on it fails as well, and the connection is dropped.
  const lost = (err: Error) => (broken = err);
  client.on('error', lost);
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    // A connection that cannot even roll back is dropped from the pool, not handed to the next caller.
    await client.query('ROLLBACK').catch((e: Error) => (broken = e));
    throw err;
  } finally {
    client.off('error', lost);
    client.release(broken);
  }
}
