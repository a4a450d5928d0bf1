// `simbridge start --ready-json`: one JSON line, once every listener is bound, naming the ports the OS
// chose for those configured as 0 — what the process harness (test/helpers/processes.ts) starts from.
import { createSocket } from 'node:dgram';
import { existsSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { spawnCli, tempDir, writeYaml, type CliProcess } from './helpers/processes.ts';
import { testStorage } from './helpers/storage-mode.ts';

const accepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });

/** Binding the same UDP port fails while simbridge holds it. */
const udpTaken = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = createSocket('udp4');
    s.once('error', () => (s.close(), resolve(true)));
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(false)));
  });

describe('the ready signal', () => {
  const procs: CliProcess[] = [];
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.kill('SIGTERM')));
  });

  it('names every bound port of a sandbox-mode gateway, sandbox included, instead of the banner', async () => {
    const dir = tempDir('ready');
    const config = writeYaml(dir, 'gateway.yaml', {
      dataDir: join(dir, 'data'),
      storage: await testStorage(join(dir, 'data')),
      // CoAP is on by default in sandbox mode; its default port would collide with other suites' gateways.
      listeners: { mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, coap: { host: '127.0.0.1', port: 0 } },
      radius: { enabled: true, host: '127.0.0.1', port: 0, clients: [{ address: '127.0.0.1', secret: 'ready-test' }] },
      admin: { port: 0 },
      sandbox: { controlPort: 0, dataPort: 0, observerPort: 0 },
      log: { level: 'warn' },
    });
    const proc = spawnCli(['start', '--config', config, '--ready-json']);
    procs.push(proc);
    const ready = await proc.ready(60_000);

    expect(ready.ready).toBe('gateway');
    expect(ready.pid).toBe(proc.child.pid);
    const { mqtt, http, coap, radius, admin, sandboxControl, sandboxData, sandboxObserver } = ready.ports;
    for (const port of [mqtt, http, admin, sandboxControl, sandboxData, sandboxObserver]) {
      expect(port).toBeGreaterThan(0);
      expect(await accepts(port!)).toBe(true);
    }
    for (const port of [radius, coap]) {
      expect(port).toBeGreaterThan(0);
      expect(await udpTaken(port!)).toBe(true);
    }
    expect(ready.sandbox!.controlEndpoint).toBe(`http://127.0.0.1:${sandboxControl}`);
    for (const file of [ready.sandbox!.caFile, ready.sandbox!.serverCertFile, ready.sandbox!.serverKeyFile]) expect(existsSync(file)).toBe(true);
    // Machine mode: the human banner is not printed.
    expect(proc.output).not.toContain('simbridge is running');
  });
});
