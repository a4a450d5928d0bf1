// Both dialects' migrations build the same schema: every number exists for SQLite and PostgreSQL, and the
// tables, columns (type family, nullability) and indexes they leave are the same.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../storage/db.ts';
import { migrationFiles, unpairedMigrations } from '../storage/migration-files.ts';
import { openPostgres } from '../storage/postgres/connect.ts';
import { findPostgres, PostgresServer } from './helpers/postgres.ts';

type Schema = Record<string, { columns: string[]; indexes: string[] }>;

// Type families: what one column holds in either dialect.
const sqliteFamily = (t: string) => ({ INTEGER: 'int', TEXT: 'text', BLOB: 'bytes' })[t.toUpperCase()] ?? t;
const postgresFamily = (t: string) => ({ bigint: 'int', integer: 'int', smallint: 'int', text: 'text', bytea: 'bytes' })[t] ?? t;

function sqliteSchema(): Schema {
  const db = openDatabase({ file: join(mkdtempSync(join(tmpdir(), 'simbridge-schema-')), 's.db'), synchronous: 'normal' });
  try {
    const schema: Schema = {};
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").pluck().all() as string[];
    for (const table of tables) {
      const cols = db.prepare('SELECT name, type, "notnull", pk FROM pragma_table_info(?) ORDER BY name').all(table) as Array<{ name: string; type: string; notnull: number; pk: number }>;
      // A primary key is NOT NULL in PostgreSQL whether declared so or not.
      const columns = cols.map((c) => `${c.name} ${sqliteFamily(c.type)}${c.notnull || c.pk ? ' not null' : ''}`);
      const indexes = db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL ORDER BY name").pluck().all(table) as string[];
      schema[table] = { columns, indexes };
    }
    return schema;
  } finally {
    db.close();
  }
}

async function postgresSchema(url: string): Promise<Schema> {
  const pool = await openPostgres({ url });
  try {
    const schema: Schema = {};
    const cols = await pool.query<{ table_name: string; column_name: string; data_type: string; is_nullable: string }>(
      `SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
       WHERE table_schema = current_schema() ORDER BY table_name, column_name`,
    );
    for (const c of cols.rows) {
      (schema[c.table_name] ??= { columns: [], indexes: [] }).columns.push(`${c.column_name} ${postgresFamily(c.data_type)}${c.is_nullable === 'NO' ? ' not null' : ''}`);
    }
    // Indexes made by a PRIMARY KEY or UNIQUE constraint are SQLite's unnamed autoindexes: left out on both sides.
    const idx = await pool.query<{ tablename: string; indexname: string }>(
      `SELECT tablename, indexname FROM pg_indexes i WHERE schemaname = current_schema()
         AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conname = i.indexname) ORDER BY tablename, indexname`,
    );
    for (const i of idx.rows) schema[i.tablename]!.indexes.push(i.indexname);
    return schema;
  } finally {
    await pool.end();
  }
}

describe('migrations', () => {
  it('exist for both dialects under one name each, numbered once', () => {
    expect(unpairedMigrations()).toEqual({ sqliteOnly: [], postgresOnly: [] });
    expect(migrationFiles('sqlite').map((f) => f.version)).toEqual(migrationFiles('postgres').map((f) => f.version));
  });
});

const bin = findPostgres();
describe.skipIf(!bin)('migrations on PostgreSQL', () => {
  let server: PostgresServer;
  beforeAll(async () => {
    server = await PostgresServer.start(bin!);
  }, 120_000);
  afterAll(() => server?.close());

  it('build the same tables, columns and indexes as on SQLite', async () => {
    const url = await server.database();
    const [sqlite, postgres] = [sqliteSchema(), await postgresSchema(url)];
    expect(Object.keys(postgres).sort()).toEqual(Object.keys(sqlite).sort());
    for (const table of Object.keys(sqlite)) expect([table, postgres[table]]).toEqual([table, sqlite[table]]);
  });

  it('run once: a second node opening the same database applies nothing again', async () => {
    const url = await server.database();
    const [a, b] = await Promise.all([openPostgres({ url }), openPostgres({ url })]);
    const rows = (await a.query('SELECT version FROM schema_migrations ORDER BY version')).rows.map((r) => r.version);
    expect(rows).toEqual(migrationFiles('postgres').map((f) => f.version));
    await Promise.all([a.end(), b.end()]);
  });

  it('refuse a server that cannot be reached with one line naming it', async () => {
    await expect(openPostgres({ url: 'postgres://u@127.0.0.1:1/x', connectTimeoutMs: 2000 })).rejects.toThrow(/^cannot open PostgreSQL at 127\.0\.0\.1:1: /);
  });
});
