import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Migrations have one source of truth per number: `storage/migrations/NNN_name.sql` for SQLite and its
 * twin of the same name in `storage/migrations/postgres/` for PostgreSQL. A migration is added to both
 * dialects at once; test/migrations.test.ts fails when a number has only one side, or when the two
 * schemas they build differ in a table, a column or an index.
 */
export type Dialect = 'sqlite' | 'postgres';

export interface MigrationFile {
  version: number;
  name: string;
  path: string;
}

const root = join(dirname(fileURLToPath(import.meta.url)), 'migrations');

export const migrationsDir = (dialect: Dialect): string => (dialect === 'sqlite' ? root : join(root, 'postgres'));

/** A dialect's migrations in order; two files with one number are refused (the second would be skipped as applied). */
export function migrationFiles(dialect: Dialect): MigrationFile[] {
  const dir = migrationsDir(dialect);
  const files = readdirSync(dir)
    .filter((f) => /^\d+_.+\.sql$/.test(f))
    .sort()
    .map((name) => ({ version: Number(name.split('_')[0]), name, path: join(dir, name) }));
  const versions = files.map((f) => f.version);
  const twice = versions.find((v, i) => versions.indexOf(v) !== i);
  if (twice !== undefined) throw new Error(`${dir}: two migrations are numbered ${twice}`);
  return files;
}

/** Migration file names one dialect has and the other lacks. */
export function unpairedMigrations(): { sqliteOnly: string[]; postgresOnly: string[] } {
  const sqlite = new Set(migrationFiles('sqlite').map((f) => f.name));
  const postgres = new Set(migrationFiles('postgres').map((f) => f.name));
  return { sqliteOnly: [...sqlite].filter((n) => !postgres.has(n)), postgresOnly: [...postgres].filter((n) => !sqlite.has(n)) };
}
