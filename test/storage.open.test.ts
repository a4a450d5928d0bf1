// Choosing the database: SQLite in the data directory by default, PostgreSQL with storage.url; an
// unreachable server is one line naming it, and the CLI's exit code 69.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../config/load.ts';
import { StorageUnavailableError } from '../storage/files.ts';
import { openStores } from '../storage/open.ts';
import { runCli } from './helpers/cli.ts';
import { findPostgres, PostgresServer } from './helpers/postgres.ts';
import { freePort } from './helpers/processes.ts';

const IMSI = '001010000000301';

function refusal(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('storage.url in the configuration', () => {
  it('is taken from the file or SIMBRIDGE_STORAGE_URL; anything but postgres:// is refused, its password masked', () => {
    expect(loadConfig(undefined, {}).storage.url).toBeUndefined();
    const url = 'postgres://gw:hunter2@db.example:5432/simbridge';
    expect(loadConfig(undefined, { SIMBRIDGE_STORAGE_URL: url }).storage.url).toBe(url);
    expect(refusal(() => loadConfig(undefined, { SIMBRIDGE_STORAGE_URL: 'mysql://gw:hunter2@db.example/x' }))).toEqual([
      'storage.url: expected a postgres:// connection string (got "mysql://gw:***@db.example/x")',
    ]);
  });

  it('passes `simbridge config check`; `simbridge start` on an unreachable server exits 69 in one line naming it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'simbridge-open-'));
    const port = await freePort();
    writeFileSync(join(dir, 'c.yaml'), `dataDir: ${join(dir, 'data')}\nstorage:\n  url: postgres://gw:hunter2@127.0.0.1:${port}/simbridge\n  connectTimeoutMs: 3000\n`);
    const check = await runCli(['config', 'check', join(dir, 'c.yaml')]);
    expect(check.output).not.toContain('hunter2');
    expect(check.code).toBe(0);
    const start = await runCli(['start', '--config', join(dir, 'c.yaml')], { SIMBRIDGE_MASTER_KEY: '11'.repeat(32) });
    expect(start.output).not.toContain('hunter2');
    // Besides the log's JSON lines (the default sandbox mode starts its local cloud first), one line.
    expect(start.output.trim().split('\n').filter((l) => !l.startsWith('{'))).toEqual([expect.stringMatching(new RegExp(`^simbridge: cannot open PostgreSQL at 127\\.0\\.0\\.1:${port}: \\S`))]);
    expect(start.code).toBe(69);
  }, 60_000);
});

describe('opening the stores', () => {
  it('opens SQLite in the data directory when no url is given', async () => {
    const opened = await openStores({ dataDir: mkdtempSync(join(tmpdir(), 'simbridge-open-')), synchronous: 'normal' });
    expect(opened.dialect).toBe('sqlite');
    await opened.stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-301' });
    expect((await opened.stores.sims.get(IMSI))?.thingName).toBe('sim-301');
    await opened.close();
  });

  it('fails in one line naming the server when PostgreSQL cannot be reached', async () => {
    const port = await freePort();
    const started = Date.now();
    const err = await openStores({ dataDir: '/nonexistent', url: `postgres://gw:secret@127.0.0.1:${port}/simbridge`, synchronous: 'full', connectTimeoutMs: 3000 }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(StorageUnavailableError);
    expect((err as Error).message).toMatch(new RegExp(`^cannot open PostgreSQL at 127\\.0\\.0\\.1:${port}: \\S`));
    expect((err as Error).message).not.toContain('\n');
    expect((err as Error).message).not.toContain('secret');
    expect(Date.now() - started).toBeLessThan(5000);
  });
});

const bin = findPostgres();
describe.skipIf(!bin)('opening the stores on PostgreSQL', () => {
  let server: PostgresServer;
  beforeAll(async () => {
    server = await PostgresServer.start(bin!);
  }, 120_000);
  afterAll(() => server?.close());

  it('opens the database storage.url names, migrated, with the same stores', async () => {
    const url = await server.database();
    const opened = await openStores({ dataDir: '/nonexistent', url, synchronous: 'full' });
    expect(opened.dialect).toBe('postgres');
    await opened.stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-301' });
    await opened.stores.audit.record('sim_registered', IMSI);
    await opened.close();
    const again = await openStores({ dataDir: '/nonexistent', url, synchronous: 'full' });
    expect((await again.stores.sims.get(IMSI))?.thingName).toBe('sim-301');
    expect((await again.stores.audit.query({ imsi: IMSI })).items.map((e) => e.kind)).toEqual(['sim_registered']);
    await again.close();
  });

  it('commits with synchronous_commit on, whatever the server\'s default', async () => {
    const url = await server.database();
    const opened = await openStores({ dataDir: '/nonexistent', url, synchronous: 'full' });
    if (opened.dialect !== 'postgres') throw new Error('expected PostgreSQL');
    const admin = await openStores({ dataDir: '/nonexistent', url, synchronous: 'full' });
    if (admin.dialect !== 'postgres') throw new Error('expected PostgreSQL');
    await admin.pool.query(`ALTER DATABASE ${new URL(url).pathname.slice(1)} SET synchronous_commit = off`);
    await admin.close();
    const fresh = await openStores({ dataDir: '/nonexistent', url, synchronous: 'full' });
    if (fresh.dialect !== 'postgres') throw new Error('expected PostgreSQL');
    expect((await fresh.pool.query('SHOW synchronous_commit')).rows[0].synchronous_commit).toBe('on');
    await Promise.all([opened.close(), fresh.close()]);
  });
});
