import Database from 'better-sqlite3';
import { readFileSync } from 'node:fs';
import { prepareDatabaseFile, StorageError } from './files.ts';
import { migrationFiles } from './migration-files.ts';

export type Db = Database.Database;

export interface OpenOptions {
  file: string;
  /** full survives power loss; normal survives a process crash only */
  synchronous: 'full' | 'normal';
  /** Page cache of this connection in MiB (SQLite's default is 2). */
  cacheMb?: number;
}

/**
 * Opens the database in WAL mode (files private to this user: storage/files.ts) and applies pending
 * migrations (storage/migrations/NNN_name.sql, in order; storage/migration-files.ts).
 */
export function openDatabase(opts: OpenOptions): Db {
  if (opts.file !== ':memory:') prepareDatabaseFile(opts.file);
  const failed = (err: unknown) => new StorageError(`cannot open the database ${opts.file}: ${(err as Error).message}`);
  let db: Db;
  try {
    db = new Database(opts.file);
  } catch (err) {
    throw failed(err);
  }
  try {
    db.pragma('journal_mode = WAL');
  } catch (err) {
    db.close();
    throw failed(err);
  }
  db.pragma(`synchronous = ${opts.synchronous === 'full' ? 'FULL' : 'NORMAL'}`);
  db.pragma('foreign_keys = ON');
  if (opts.cacheMb) db.pragma(`cache_size = ${-Math.round(opts.cacheMb * 1024)}`);
  // Two processes may share one database (vending must not double-vend): wait for locks instead of failing.
  db.pragma('busy_timeout = 5000');
  reuseStatements(db);
  migrate(db);
  return db;
}

/** Statements kept per connection: past this many distinct SQL texts the least recently used is dropped. */
const STATEMENT_CACHE_SIZE = 256;

/**
 * Makes `db.prepare(sql)` compile each SQL text once per connection. Stores prepare many statements
 * where they run (a vend's steps, admin queries); compiling one costs more than running it, and the
 * first contact of a SIM ran a dozen such on the thread that serves devices. A statement's read mode
 * (pluck, raw, expand) is reset each time it is handed out, so every caller starts from the defaults
 * as with a fresh statement; the project binds parameters per call, never with `.bind()`.
 */
function reuseStatements(db: Db): void {
  const compile = db.prepare.bind(db);
  const cache = new Map<string, Database.Statement>();
  db.prepare = ((sql: string) => {
    let stmt = cache.get(sql);
    if (stmt) {
      // Most recently used last: Map keeps insertion order.
      cache.delete(sql);
      if (stmt.reader) stmt.pluck(false).raw(false).expand(false);
    } else {
      stmt = compile(sql);
      if (cache.size >= STATEMENT_CACHE_SIZE) cache.delete(cache.keys().next().value!);
    }
    cache.set(sql, stmt);
    return stmt;
  }) as Db['prepare'];
}

function migrate(db: Db): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)');
  const applied = new Set(db.prepare('SELECT version FROM schema_migrations').pluck().all() as number[]);
  for (const { version, name, path } of migrationFiles('sqlite')) {
    if (applied.has(version)) continue;
    const sql = readFileSync(path, 'utf8');
    db.transaction(() => {
      db.exec(sql);
      db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(version, name, Date.now());
    }).immediate();
  }
}
