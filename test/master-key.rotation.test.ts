import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { runCli } from './helpers/cli.ts';
import { deviceOptions, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, spawnCli, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const IMEI = '490154203237518';
// Keys come from the files named in the config: the environment variable would win over them.
const env = { SIMBRIDGE_MASTER_KEY: '', SIMBRIDGE_PREVIOUS_MASTER_KEYS: '' };

describe('rotating the master key while the gateway runs', () => {
  const dir = tempDir('rotate');
  const oldKey = join(dir, 'old.key');
  const newKey = join(dir, 'new.key');
  let sandbox: SandboxProcess;
  let observer: Observer;
  let config: string;
  const gateways: GatewayProcess[] = [];

  const setKeys = (masterKeyFile: string, previousMasterKeyFiles: string[]) => {
    const c = parse(readFileSync(config, 'utf8'));
    writeFileSync(config, stringify({ ...c, security: { masterKeyFile, previousMasterKeyFiles }, log: { level: 'info' } }));
  };
  const send = async (g: GatewayProcess, imsi: string, text: string) => {
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${g.mqttPort}`, deviceOptions(imsi, IMEI));
    await device.publishAsync('t', text, { qos: 1 });
    await device.endAsync();
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === text));
  };
  const certificates = async () => ((await (await fetch(`${sandbox.controlEndpoint}/_sandbox/state`)).json()) as { certificates: unknown[] }).certificates.length;

  beforeAll(async () => {
    for (const f of [oldKey, newKey]) writeFileSync(f, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    sandbox = await startSandboxProcess(dir);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    config = (await gatewayConfig(dir, sandbox)).file;
    setKeys(oldKey, []);
  });

  afterAll(async () => {
    await observer?.close();
    for (const g of gateways) await g.kill();
    await sandbox?.process.kill();
  });

  it('re-seals every key under the new one without a restart, and the old key no longer opens the database', async () => {
    const running = await startGatewayProcess(config, { env, timeoutMs: 90_000 });
    gateways.push(running);
    await send(running, '001010000000091', 'vended under the old key');

    // The new key becomes current on a reload; keys sealed under the old one still open meanwhile.
    setKeys(newKey, [oldKey]);
    running.child.kill('SIGHUP');
    await running.waitFor('master keys reloaded');

    const rotated = await runCli(['rotate-master-key', '--config', config], env);
    expect(rotated.output).toContain('re-sealed 1 private key(s); 0 already under the current key');
    expect(rotated.code).toBe(0);
    // The same gateway, never restarted, goes on vending and delivering.
    await send(running, '001010000000092', 'vended under the new key');
    await running.kill();

    // With the new key alone, both SIMs' keys open: nothing is vended again.
    setKeys(newKey, []);
    const after = await startGatewayProcess(config, { env, timeoutMs: 90_000 });
    gateways.push(after);
    await send(after, '001010000000091', 'old SIM after the rotation');
    expect(await certificates()).toBe(2);
    await after.kill();

    // The old key alone is refused at start: the database is sealed under the new one now.
    setKeys(oldKey, []);
    const refused = spawnCli(['start', '--config', config], env);
    expect(await refused.exited).not.toBe(0);
    expect(refused.output).toContain('the master key does not match');
  }, 180_000);

  it('refuses to rotate with no previous key configured', async () => {
    setKeys(newKey, []);
    const { code, output } = await runCli(['rotate-master-key', '--config', config], env);
    expect(output).toContain('no previous master key configured');
    expect(code).toBe(64);
  }, 60_000);
});
