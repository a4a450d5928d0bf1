// The database the gateways of a test run keep their state in. By default SQLite in each gateway's data
// directory; with SIMBRIDGE_TEST_STORAGE=postgres (npm run test:postgres) a database of its own per data
// directory on a throw-away PostgreSQL server the tests start (initdb, pg_ctl, a free port). Tests read and seed a gateway's state through gatewayState() and
// gatewayStores(), which follow the same choice, never by opening the SQLite file themselves.
import Database from 'better-sqlite3';
import { rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { pgTypes } from '../../storage/postgres/connect.ts';
import { openStores, type OpenedStores } from '../../storage/open.ts';
import { findPostgres, PostgresServer } from './postgres.ts';

export type StorageDialect = 'sqlite' | 'postgres';

/** The dialect gateways get unless a test names its own storage.url or keeps SQLite on purpose. */
export const testDialect: StorageDialect = process.env.SIMBRIDGE_TEST_STORAGE === 'postgres' ? 'postgres' : 'sqlite';

// The run's server (test/helpers/postgres-global.ts), or, where no global setup started one (a single
// file run by other means), one per test process, stopped when it exits. Kept on globalThis so that it
// outlives a module reset between test files.
interface SharedPostgres {
  /** Creates a new empty database; resolves with its connection string. */
  create(): Promise<string>;
  urls: Map<string, Promise<string>>;
}
const shared = globalThis as { simbridgeTestPostgres?: SharedPostgres };

function postgres(): SharedPostgres {
  if (shared.simbridgeTestPostgres) return shared.simbridgeTestPostgres;
  const runServer = process.env.SIMBRIDGE_TEST_POSTGRES_URL;
  if (runServer) {
    const admin = new pg.Pool({ connectionString: runServer, max: 1 });
    admin.on('error', () => undefined);
    let made = 0;
    const create = async () => {
      const name = `g${process.pid}_${++made}`;
      await admin.query(`CREATE DATABASE ${name}`);
      const url = new URL(runServer);
      url.pathname = `/${name}`;
      return url.toString();
    };
    return (shared.simbridgeTestPostgres = { create, urls: new Map() });
  }
  const bin = findPostgres();
  if (!bin) throw new Error('SIMBRIDGE_TEST_STORAGE=postgres needs the PostgreSQL server programs (Debian package postgresql)');
  const server = PostgresServer.start(bin);
  // Exit handlers run synchronously: keep the started server at hand for the one that stops it.
  let started: PostgresServer | undefined;
  void server.then((s) => (started = s)).catch(() => undefined);
  process.on('exit', () => {
    if (!started) return;
    started.stopNow();
    rmSync(started.dir, { recursive: true, force: true });
  });
  return (shared.simbridgeTestPostgres = { create: async () => (await server).database(), urls: new Map() });
}

/**
 * The storage.url of the gateway whose data directory this is, in PostgreSQL mode: the same database each
 * time for one directory (a restart finds its state), a new one for another. Undefined on SQLite.
 */
export function testStorageUrl(dataDir: string): Promise<string | undefined> {
  if (testDialect === 'sqlite') return Promise.resolve(undefined);
  const pgs = postgres();
  const key = resolve(dataDir);
  let url = pgs.urls.get(key);
  if (!url) {
    url = pgs.create();
    pgs.urls.set(key, url);
  }
  return url;
}

/**
 * The `storage` section for a gateway config: the test's own settings, plus the mode's database unless the
 * test names a url or keeps SQLite (`keepSqlite`, for tests about the SQLite file itself).
 */
export async function testStorage(dataDir: string, storage: Record<string, unknown> = {}, keepSqlite = false): Promise<Record<string, unknown>> {
  if (keepSqlite || storage.url) return storage;
  const url = await testStorageUrl(dataDir);
  return url ? { ...storage, url } : storage;
}

/** The dialect the gateway of this data directory runs on (after testStorage chose). */
export function dialectOf(dataDir: string): StorageDialect {
  return shared.simbridgeTestPostgres?.urls.has(resolve(dataDir)) ? 'postgres' : 'sqlite';
}

/** Rows of a gateway's database, read with SQL that both dialects understand (`?` placeholders). */
export interface GatewayState {
  dialect: StorageDialect;
  all<T = Record<string, unknown>>(sql: string, ...args: unknown[]): Promise<T[]>;
  get<T = Record<string, unknown>>(sql: string, ...args: unknown[]): Promise<T | undefined>;
  run(sql: string, ...args: unknown[]): Promise<void>;
  close(): Promise<void>;
}

/**
 * Opens the database of the gateway whose data directory this is: the SQLite file (read-only unless
 * `writable`), or its PostgreSQL database. BIGINTs come back as numbers on both.
 */
export async function gatewayState(dataDir: string, opts: { writable?: boolean } = {}): Promise<GatewayState> {
  const url = dialectOf(dataDir) === 'postgres' ? await testStorageUrl(dataDir) : undefined;
  if (url) {
    const pool = new pg.Pool({ connectionString: url, max: 1, types: pgTypes });
    pool.on('error', () => undefined);
    const all = async <T,>(sql: string, ...args: unknown[]) => {
      let n = 0;
      return (await pool.query(sql.replace(/\?/g, () => `$${++n}`), args)).rows as T[];
    };
    return {
      dialect: 'postgres',
      all,
      get: async <T,>(sql: string, ...args: unknown[]) => (await all<T>(sql, ...args))[0],
      run: async (sql, ...args) => void (await all(sql, ...args)),
      close: () => pool.end(),
    };
  }
  const db = new Database(join(dataDir, 'simbridge.db'), { readonly: !opts.writable });
  return {
    dialect: 'sqlite',
    all: async <T,>(sql: string, ...args: unknown[]) => db.prepare(sql).all(...args) as T[],
    get: async <T,>(sql: string, ...args: unknown[]) => db.prepare(sql).get(...args) as T | undefined,
    run: async (sql, ...args) => void db.prepare(sql).run(...args),
    close: async () => void db.close(),
  };
}

/** Reads a gateway's database once and closes it. */
export async function withGatewayState<T>(dataDir: string, read: (state: GatewayState) => Promise<T>): Promise<T> {
  const state = await gatewayState(dataDir);
  try {
    return await read(state);
  } finally {
    await state.close();
  }
}

/**
 * Every store over the database the gateway of this data directory uses (migrated), as the gateway opens
 * them: for seeding SIMs before it starts. Close it before starting the gateway on SQLite.
 */
export async function gatewayStores(dataDir: string): Promise<OpenedStores> {
  return openStores({ dataDir, url: await testStorageUrl(dataDir), synchronous: 'normal' });
}
