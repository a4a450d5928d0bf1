// Every line of SQL lives in storage/: a query anywhere else fails here with its file and line.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const FOLDERS = ['admin', 'app', 'bin', 'bridge', 'config', 'lib', 'sandbox', 'vending'];
// Statements, and the database calls that run them (a RegExp's .exec is not one: it takes no template).
const SQL = /\b(SELECT\s+[a-zA-Z*(]|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|PRAGMA\s)|\.(prepare|pragma)\(|\.exec\(`|[dD]b\.(exec|transaction)\(|\.query\(\s*['"`]/;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sources(path);
    return /\.(ts|js)$/.test(name) ? [path] : [];
  });
}

describe('storage boundary', () => {
  it('finds no SQL and no database call outside storage/', () => {
    const found: string[] = [];
    for (const folder of FOLDERS) {
      for (const file of sources(join(root, folder))) {
        readFileSync(file, 'utf8')
          .split('\n')
          .forEach((line, i) => {
            if (SQL.test(line)) found.push(`${relative(root, file)}:${i + 1}: ${line.trim()}`);
          });
      }
    }
    expect(found).toEqual([]);
  });

  it('recognises a query when it sees one', () => {
    expect(SQL.test("db.prepare('SELECT count(*) FROM outbox')")).toBe(true);
    expect(SQL.test('DELETE FROM audit WHERE at < ?')).toBe(true);
    expect(SQL.test("const m = /^(\\d+)$/.exec(text);")).toBe(false);
    expect(SQL.test("method: 'DELETE',")).toBe(false);
    expect(SQL.test("await pool.query('VACUUM outbox')")).toBe(true); // node-postgres
    expect(SQL.test('const q = request.query;')).toBe(false);
  });
});
