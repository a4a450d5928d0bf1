// Vending seen from outside, with simbridge and the sandbox as separate processes: first contacts,
// throttling, two processes on one database, the master key.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyCipher } from '../vending/key-cipher.ts';
import { Observer } from './helpers/mqtt.ts';
import { spawnCli, startGatewayProcess, startSandboxProcess, tempDir, TEST_MASTER_KEY, writeYaml, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { gatewayStores, testStorage, withGatewayState } from './helpers/storage-mode.ts';

const IMEI = '490154203237518';

interface SandboxState {
  certificates: Array<{ certificateId: string; status: string; subject: string }>;
}

describe('vending with simbridge and the sandbox as processes', () => {
  const dir = tempDir('vending-proc');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;

  const control = (path: string, init?: RequestInit) => fetch(`${sandbox.controlEndpoint}${path}`, init).then((r) => r.json());
  const certsOf = async (imsi: string) => ((await control('/_sandbox/state')) as SandboxState).certificates.filter((c) => c.subject === `CN=sim-${imsi}`);
  const config = async (name: string, dataDir: string, vending: Record<string, unknown> = {}) =>
    writeYaml(dir, name, {
      mode: 'aws',
      dataDir,
      storage: await testStorage(dataDir),
      listeners: { mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 } },
      identity: { allowInsecureClaims: true }, // devices claim their identity: a lab
      vending: { endpoint: sandbox.controlEndpoint, credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' }, retryDelayMs: 200, ...vending },
      upstream: { endpoint: 'localhost', port: sandbox.dataPort, caFile: sandbox.caFile, retryDelayMs: 200, retryMaxDelayMs: 1000 },
      admin: { port: 0 },
      log: { level: 'warn' },
    });
  const post = (imsi: string, topic: string, body: string) =>
    fetch(`http://127.0.0.1:${gateway.httpPort}/topics/${topic}?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': IMEI }, body });

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    gateway = await startGatewayProcess(await config('gateway.yaml', join(dir, 'gateway'), { callMaxAttempts: 12 }));
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('vends one certificate for 100 concurrent first contacts of one SIM and delivers all 100 messages', async () => {
    const imsi = '001010000080001';
    const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => post(imsi, 'first', `m${i}`).then(async (r) => ({ status: r.status, body: await r.text() }))));
    const refused = answers.filter((a) => a.status !== 202);
    expect(refused, gateway.output).toEqual([]);
    await observer.waitUntil((m) => m.filter((x) => x.topic === `devices/sim-${imsi}/first`).length >= 100);
    expect(await certsOf(imsi)).toEqual([expect.objectContaining({ status: 'ACTIVE' })]);
  });

  it('vends through a throttling IoT Core with no error reaching devices or the vending state', async () => {
    await control('/_sandbox/faults', {
      method: 'POST',
      body: JSON.stringify({
        throttleRate: 0.3,
        operations: ['CreateCertificateFromCsr', 'CreateThing', 'CreatePolicy', 'AttachPolicy', 'AttachThingPrincipal'],
        tps: { CreateCertificateFromCsr: 15, AttachPolicy: 15, CreateThing: 100, AttachThingPrincipal: 100 },
      }),
    });
    try {
      const imsis = Array.from({ length: 12 }, (_, i) => `0010100000810${String(i).padStart(2, '0')}`);
      const statuses = await Promise.all(imsis.flatMap((imsi) => [0, 1].map((n) => post(imsi, 'throttled', `${imsi}-${n}`).then((r) => r.status))));
      expect(statuses.every((s) => s === 202)).toBe(true);
      await observer.waitUntil((m) => imsis.every((imsi) => m.filter((x) => x.topic === `devices/sim-${imsi}/throttled`).length >= 2), 30_000);
      const { stats } = (await control('/_sandbox/faults')) as { stats: { totals: { throttled: number } } };
      expect(stats.totals.throttled).toBeGreaterThan(0);
      const rows = await withGatewayState(join(dir, 'gateway'), (db) =>
        db.all(`SELECT step, attempts, last_error FROM credentials WHERE imsi IN (${imsis.map(() => '?').join(',')}) ORDER BY imsi`, ...imsis),
      );
      expect(rows).toEqual(imsis.map(() => ({ step: 'ready', attempts: 0, last_error: null })));
    } finally {
      await control('/_sandbox/faults', { method: 'DELETE' });
    }
  });

  it('keeps keys sealed under the master key, and refuses to start with another master key', async () => {
    const row = (await withGatewayState(join(dir, 'gateway'), (db) => db.get<{ imsi: string; key_enc: Buffer }>("SELECT imsi, key_enc FROM credentials WHERE step = 'ready' LIMIT 1")))!;
    expect(row.key_enc.toString('latin1')).not.toMatch(/PRIVATE KEY|BEGIN/);
    expect(() => new KeyCipher(Buffer.alloc(32, 0x22)).decrypt(row.key_enc, row.imsi)).toThrow();
    expect(new KeyCipher(Buffer.from(TEST_MASTER_KEY, 'hex')).decrypt(row.key_enc, row.imsi).toString()).toContain('BEGIN PRIVATE KEY');

    const other = spawnCli(['start', '--config', join(dir, 'gateway.yaml')], { SIMBRIDGE_MASTER_KEY: '22'.repeat(32) });
    const none = spawnCli(['start', '--config', join(dir, 'gateway.yaml')], { SIMBRIDGE_MASTER_KEY: '' });
    expect(await Promise.all([other.exited, none.exited])).toEqual([1, 1]);
    expect(other.output).toContain('master key does not match the one this database was created with');
    expect(none.output).toContain('no master key');
  });

  it('two `simbridge vend` processes sharing one database vend each SIM once', async () => {
    const dataDir = join(dir, 'bulk');
    const opened = await gatewayStores(dataDir);
    const imsis = Array.from({ length: 20 }, (_, i) => `0010100000820${String(i).padStart(2, '0')}`);
    for (const imsi of imsis) await opened.stores.sims.register({ imsi, group: 'default', thingName: `sim-${imsi}` });
    await opened.close();
    const file = await config('bulk.yaml', dataDir);
    const runs = [0, 1].map(() => spawnCli(['vend', '--config', file, '--json'], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY }));
    const codes = await Promise.all(runs.map((r) => r.exited));
    expect(codes, runs.map((r) => r.output).join('\n')).toEqual([0, 0]);
    const summaries = runs.map((r) => JSON.parse(r.output.split('\n').find((l) => l.startsWith('{'))!) as { total: number; vended: number; failed: unknown[] });
    // Each run vends all it found pending. The first to look found all 20; the other, if it looked only
    // after some were vended (a slower start, a database over the network), found fewer.
    for (const summary of summaries) expect(summary).toMatchObject({ vended: summary.total, failed: [] });
    expect(Math.max(...summaries.map((s) => s.total))).toBe(20);
    for (const imsi of imsis) expect(await certsOf(imsi), imsi).toHaveLength(1);
    // Nothing left to do: a third run vends nothing and succeeds.
    const again = spawnCli(['vend', '--config', file, '--json'], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY });
    expect(await again.exited).toBe(0);
    expect(again.output).toContain('"total":0');
  });
});
