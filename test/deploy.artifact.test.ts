import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CliProcess, tempDir, writeYaml } from './helpers/processes.ts';
import { Observer } from './helpers/mqtt.ts';
import { testStorage } from './helpers/storage-mode.ts';

// The production path: `npm run build`, an install without dev dependencies, and plain `node` on the
// built JavaScript (no TypeScript loader, in the worker threads either).
describe('the built artifact', () => {
  const dir = tempDir('artifact');
  let gateway: CliProcess | undefined;
  let observer: Observer | undefined;

  beforeAll(() => {
    execFileSync(process.execPath, ['scripts/build.mjs', join(dir, 'dist')], { stdio: 'pipe' });
    for (const f of ['package.json', 'package-lock.json']) cpSync(f, join(dir, f));
    // What `npm ci --omit=dev` leaves, without building the native modules again: the full tree, pruned.
    cpSync('node_modules', join(dir, 'node_modules'), { recursive: true, verbatimSymlinks: true });
    execFileSync('npm', ['prune', '--omit=dev', '--offline', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'pipe' });
  }, 300_000);

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
  });

  it('has no TypeScript loader or compiler among its installed packages', () => {
    expect(existsSync(join(dir, 'node_modules', 'better-sqlite3'))).toBe(true);
    expect(existsSync(join(dir, 'node_modules', 'tsx'))).toBe(false);
    expect(existsSync(join(dir, 'node_modules', 'typescript'))).toBe(false);
  });

  it('starts on the sandbox with node alone and delivers the README demo message', async () => {
    const config = writeYaml(dir, 'sandbox.yaml', {
      dataDir: join(dir, 'data'),
      storage: await testStorage(join(dir, 'data')),
      // CoAP is on by default in sandbox mode: port 0, or it collides with other suites' gateways on 5683.
      listeners: { mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, coap: { host: '127.0.0.1', port: 0 } },
      sandbox: { controlPort: 0, dataPort: 0, observerPort: 0 },
      admin: { port: 0 },
      log: { level: 'warn' },
    });
    gateway = new CliProcess(spawn(process.execPath, ['dist/bin/simbridge.js', 'start', '--config', config], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }));
    await gateway.waitFor(/observer mqtt:\/\/\S+:\d+/, 60_000);
    const port = (re: RegExp) => Number(gateway!.output.match(re)![1]);
    observer = await Observer.connect(`mqtt://127.0.0.1:${port(/observer mqtt:\/\/\S+:(\d+)/)}`);

    const res = await fetch(`http://127.0.0.1:${port(/device HTTP\s+\S+:(\d+)/)}/topics/telemetry?qos=1`, {
      method: 'POST',
      headers: { 'X-IMSI': '001010000000001', 'X-IMEI': '490154203237518' },
      body: '{"temp":21.5}',
    });
    expect(res.status).toBe(202);
    await observer.waitUntil((m) => m.some((x) => x.topic === 'devices/sim-001010000000001/telemetry'));
    expect(observer.messages.find((x) => x.topic === 'devices/sim-001010000000001/telemetry')!.payload.toString()).toBe('{"temp":21.5}');
  }, 90_000);
});
