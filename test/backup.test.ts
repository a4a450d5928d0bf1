import { copyFileSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.ts';
import { deviceOptions, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const IMSI = '001010000000071';
const IMEI = '490154203237518';

describe('simbridge backup', () => {
  const dir = tempDir('backup');
  let sandbox: SandboxProcess;
  let observer: Observer;
  const gateways: GatewayProcess[] = [];

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
  });

  afterAll(async () => {
    await observer?.close();
    for (const g of gateways) await g.kill();
    await sandbox?.process.kill();
  });

  const certificates = async () => ((await (await fetch(`${sandbox.controlEndpoint}/_sandbox/state`)).json()) as { certificates: unknown[] }).certificates.length;

  it('copies a running gateway under writes, and a gateway restored from the copy keeps its SIMs and keys', async () => {
    // `simbridge backup` copies the SQLite database file: this stays on SQLite in every storage mode.
    const config = (await gatewayConfig(dir, sandbox, { keepSqlite: true })).file;
    const first = await startGatewayProcess(config);
    gateways.push(first);
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${first.mqttPort}`, deviceOptions(IMSI, IMEI));
    await device.publishAsync('t', 'before', { qos: 1 });
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'before'));
    expect(await certificates()).toBe(1);

    // Writes go on while the backup runs.
    let writing = true;
    const writes = (async () => {
      for (let i = 0; writing; i++) await device.publishAsync('t', `during-${i}`, { qos: 1 });
    })();
    const out = join(dir, 'simbridge.backup.db');
    const backup = await runCli(['backup', '--config', config, '--out', out]);
    writing = false;
    await writes;
    await device.endAsync();
    expect(backup.output).toMatch(/backup written to .+ \(\d+ pages, integrity checked\)/);
    expect(backup.code).toBe(0);
    expect(statSync(out).mode & 0o777).toBe(0o600);
    const copy = new Database(out, { readonly: true });
    expect(copy.prepare('SELECT count(*) FROM sims WHERE imsi = ?').pluck().get(IMSI)).toBe(1);
    copy.close();

    // A second backup to the same file is refused rather than overwriting it.
    const again = await runCli(['backup', '--config', config, '--out', out]);
    expect(again.output).toContain('exists already');
    expect(again.code).toBe(1);

    await first.kill();
    const restoredDir = tempDir('backup-restored');
    mkdirSync(join(restoredDir, 'gateway'), { recursive: true, mode: 0o700 });
    copyFileSync(out, join(restoredDir, 'gateway', 'simbridge.db'));
    const restored = await startGatewayProcess((await gatewayConfig(restoredDir, sandbox, { keepSqlite: true })).file);
    gateways.push(restored);
    const back = await mqtt.connectAsync(`mqtt://127.0.0.1:${restored.mqttPort}`, deviceOptions(IMSI, IMEI));
    await back.publishAsync('t', 'after restore', { qos: 1 });
    await back.endAsync();
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'after restore'));
    // The restored key and certificate were used: nothing was vended again.
    expect(await certificates()).toBe(1);
  }, 120_000);
});
