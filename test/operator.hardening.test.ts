import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceOptions, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, spawnCli, startGatewayProcess, startSandboxProcess, tempDir, TEST_MASTER_KEY, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { scrapeMetrics } from './helpers/http.ts';

const IMSI = '001010000000801';
const IMEI = '490154203237518';
// Another SIM's identifiers: they must never appear in the log, even inside a topic or an error.
const VICTIM = '999990000000001';

const mode = (file: string) => (statSync(file).mode & 0o777).toString(8);

/** Rewrites a gateway config file with some sections changed. */
function patchConfig(file: string, change: (cfg: Record<string, any>) => void): void {
  const cfg = parse(readFileSync(file, 'utf8'));
  change(cfg);
  writeFileSync(file, stringify(cfg));
}

/** Runs `simbridge start` expecting it to refuse; resolves with its exit code and output. */
async function startRefused(configFile: string): Promise<{ code: number | null; output: string }> {
  const proc = spawnCli(['start', '--config', configFile], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY });
  const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
  const code = await proc.exited;
  clearTimeout(timer);
  return { code, output: proc.output };
}

describe('a gateway an operator can trust with files, logs and probes', () => {
  const dir = tempDir('operator');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let configFile: string;
  let http: string;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    // One test here checks the modes of the SQLite file and its WAL: this gateway stays on SQLite in every storage mode.
    configFile = (await gatewayConfig(dir, sandbox, { keepSqlite: true })).file;
    // Info level: the lines that used to carry identifiers inside topics and errors are info and warn.
    patchConfig(configFile, (cfg) => (cfg.log = { level: 'info' }));
    gateway = await startGatewayProcess(configFile);
    http = `http://127.0.0.1:${gateway.httpPort}`;
  });

  afterAll(async () => {
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  const post = (query: string) =>
    fetch(`${http}/topics/t${query}`, { method: 'POST', headers: { 'x-imsi': IMSI, 'x-imei': IMEI }, body: 'x' });

  it('says what was wrong with ?qos= rather than blaming QoS 2', async () => {
    for (const query of ['?qos=', '?qos=abc']) {
      const res = await post(query);
      expect(res.status, query).toBe(400);
      const body = await res.json();
      expect(body.error).toBe('qos_invalid');
      expect(body.message).toContain('qos must be 0 or 1');
      expect(body.message).not.toContain('QoS 2');
    }
    expect((await post('?qos=abc')).status).toBe(400);
    const three = await (await post('?qos=3')).json();
    expect(three).toMatchObject({ error: 'qos_not_supported', message: 'QoS 3 is not supported; use QoS 0 or 1' });
    expect((await post('?qos=0')).status).toBe(202);
    expect((await post('')).status).toBe(202);
    const metrics = await scrapeMetrics(gateway.adminPort);
    expect(metrics).toMatch(/simbridge_refusals_total\{protocol="http",reason="qos_invalid"\} [1-9]/);
  });

  it('keeps the database, its WAL and the data directory private (600 / 700)', () => {
    const data = join(dir, 'gateway');
    expect(mode(data)).toBe('700');
    // Messages were committed above: the WAL and shared-memory files exist.
    for (const f of ['simbridge.db', 'simbridge.db-wal', 'simbridge.db-shm']) expect(mode(join(data, f)), f).toBe('600');
  });

  it('masks IMSIs inside topics, filters and error messages in the log', async () => {
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(IMSI, IMEI));
    // Another SIM's shadow: refused (SUBACK 0x80) and logged with the filter and the error.
    const refused = await device.subscribeAsync(`$aws/things/sim-${VICTIM}/shadow/#`, { qos: 1 }).then(() => undefined, (err: Error) => err);
    expect(refused?.message).toContain('Subscribe error'); // mqtt.js on SUBACK 0x80
    await device.endAsync();
    const seen = () => gateway.output.split('\n').filter((l) => l.includes('MQTT subscription refused'));
    await expect.poll(seen).toHaveLength(1);
    const line = JSON.parse(seen()[0]!);
    expect(line.filter).toBe('$aws/things/sim-99999********01/shadow/#');
    expect(line.err).toContain('sim-99999********01');
    expect(gateway.output).not.toContain(VICTIM);
    expect(gateway.output).not.toContain(IMSI);
  });

  it('is ready with room on disk', async () => {
    const res = await fetch(`http://127.0.0.1:${gateway.adminPort}/readyz`);
    expect(res.status).toBe(200);
    expect((await res.json()).checks).toMatchObject({ database: true, disk: true });
  });

  it('is not ready while the data directory lacks room for commits', async () => {
    const sub = tempDir('operator-full');
    // Room for commits in the data directory is a SQLite concern: this gateway stays on SQLite in every storage mode.
    const file = (await gatewayConfig(sub, sandbox, { keepSqlite: true })).file;
    // More than any disk here has free: the gateway starts, and must say it cannot take messages.
    patchConfig(file, (cfg) => (cfg.storage = { minFreeMb: 1024 ** 3 }));
    const full = await startGatewayProcess(file);
    try {
      const res = await fetch(`http://127.0.0.1:${full.adminPort}/readyz`);
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ status: 'not ready', checks: { database: true, disk: false } });
    } finally {
      await full.kill();
    }
  });

  it('serves the admin API over HTTPS with admin.tls', async () => {
    const sub = tempDir('operator-tls');
    const file = (await gatewayConfig(sub, sandbox)).file;
    // The sandbox's server certificate names localhost and 127.0.0.1: good enough for an admin server.
    patchConfig(file, (cfg) => (cfg.admin = { port: 0, tls: { certFile: sandbox.serverCertFile, keyFile: sandbox.serverKeyFile } }));
    const tls = await startGatewayProcess(file);
    try {
      const status = await new Promise<number>((resolve, reject) =>
        httpsGet({ host: '127.0.0.1', port: tls.adminPort, path: '/healthz', ca: readFileSync(sandbox.caFile) }, (res) => (res.resume(), resolve(res.statusCode ?? 0))).on('error', reject),
      );
      expect(status).toBe(200);
      // Plain HTTP on the same port gets no answer it could mistake for the API.
      await expect(fetch(`http://127.0.0.1:${tls.adminPort}/healthz`).then((r) => r.status)).rejects.toThrow();
    } finally {
      await tls.kill();
    }
  });

  it('refuses to start outside the sandbox on a data directory other users can read', async () => {
    const sub = tempDir('operator-open');
    const file = (await gatewayConfig(sub, sandbox)).file;
    const data = join(sub, 'gateway');
    mkdirSync(data);
    chmodSync(data, 0o755);
    const r = await startRefused(file);
    expect(r.code).toBe(1);
    expect(r.output).toContain(`the data directory ${data} is open to other users (mode 755)`);
    expect(r.output).toContain('chmod 700');
  });

  it('names the path and the cause when the data directory is read-only', async () => {
    const sub = tempDir('operator-ro');
    const file = (await gatewayConfig(sub, sandbox)).file;
    const data = join(sub, 'gateway');
    mkdirSync(data, { mode: 0o700 });
    let unmount: (() => void) | undefined;
    if (process.getuid?.() === 0) {
      // root writes through any mode: only a read-only file system stops it.
      try {
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,mode=700,size=1m', 'tmpfs', data], { stdio: 'ignore' });
        unmount = () => execFileSync('umount', [data]);
      } catch {
        console.log('skipping the read-only data directory check: cannot mount a read-only tmpfs here');
        return;
      }
    } else {
      chmodSync(data, 0o500);
    }
    try {
      const r = await startRefused(file);
      expect(r.code).toBe(1);
      expect(r.output).toMatch(new RegExp(`the data directory ${data} is not writable \\((EROFS|EACCES)`));
    } finally {
      unmount?.();
      chmodSync(data, 0o700);
    }
  });

  it('still delivers a well-behaved device', async () => {
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(IMSI, IMEI));
    await device.publishAsync('ok', 'after-all', { qos: 1 });
    await device.endAsync();
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'after-all'));
    await observer.close();
  });
});
