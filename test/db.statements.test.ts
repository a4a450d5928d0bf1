// openDatabase compiles each SQL text once per connection (storage/db.ts, reuseStatements).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openDatabase, type Db } from '../storage/db.ts';

let db: Db | undefined;
afterEach(() => db?.close());

function fresh(): Db {
  db = openDatabase({ file: join(mkdtempSync(join(tmpdir(), 'simbridge-stmt-')), 'simbridge.db'), synchronous: 'full' });
  db.exec('CREATE TABLE t (a INTEGER, b TEXT)');
  db.prepare('INSERT INTO t (a, b) VALUES (?, ?)').run(1, 'one');
  return db;
}

describe('prepared statements per connection', () => {
  it('hands out the statement compiled before for the same SQL', () => {
    const d = fresh();
    expect(d.prepare('SELECT a, b FROM t')).toBe(d.prepare('SELECT a, b FROM t'));
    expect(d.prepare('SELECT a FROM t')).not.toBe(d.prepare('SELECT a, b FROM t'));
  });

  it('starts every caller from the default read mode, whatever the previous caller set', () => {
    const d = fresh();
    expect(d.prepare('SELECT a, b FROM t').pluck().get()).toBe(1);
    expect(d.prepare('SELECT a, b FROM t').get()).toEqual({ a: 1, b: 'one' });
    expect(d.prepare('SELECT a, b FROM t').raw().get()).toEqual([1, 'one']);
    expect(d.prepare('SELECT a, b FROM t').all()).toEqual([{ a: 1, b: 'one' }]);
    expect(d.prepare('SELECT a, b FROM t').expand().get()).toEqual({ t: { a: 1, b: 'one' } });
    expect(d.prepare('SELECT a, b FROM t').get()).toEqual({ a: 1, b: 'one' });
  });

  it('keeps a bounded number of statements, dropping the least recently used', () => {
    const d = fresh();
    const first = d.prepare('SELECT 0 AS n');
    for (let i = 1; i <= 300; i++) d.prepare(`SELECT ${i} AS n`);
    const again = d.prepare('SELECT 0 AS n');
    expect(again).not.toBe(first);
    expect(again.get()).toEqual({ n: 0 });
    // Recently used statements are still the same objects.
    expect(d.prepare('SELECT 300 AS n')).toBe(d.prepare('SELECT 300 AS n'));
  });
});
