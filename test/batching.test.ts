import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { parse, stringify } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeBatch } from '../docs/examples/decode-batch.mjs';
import { closed, connectDevice, deviceOptions, Observer, type Received } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir } from './helpers/processes.ts';
import { scrapeMetrics } from './helpers/http.ts';
import { gatewayState } from './helpers/storage-mode.ts';

const IMEI = '490154203237518';

function post(port: number, imsi: string, topic: string, body: string) {
  return fetch(`http://127.0.0.1:${port}/topics/${topic}?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': IMEI }, body });
}

/** Every reading that reached upstream for a device, batched or not, in arrival order. */
function readings(messages: Received[], thing: string): string[] {
  const out: string[] = [];
  for (const m of messages) {
    if (m.topic === `devices/${thing}/batch`) {
      for (const r of decodeBatch(m.payload)) out.push(typeof r.payload === 'object' && !Buffer.isBuffer(r.payload) ? JSON.stringify(r.payload) : String(r.payload));
    } else if (m.topic.startsWith(`devices/${thing}/`)) out.push(m.payload.toString());
  }
  return out;
}

const batchesOf = (messages: Received[], thing: string) => messages.filter((m) => m.topic === `devices/${thing}/batch`).map((m) => decodeBatch(m.payload));

describe('batching for sleepy senders', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });

  it('window: packs readings into batches of maxMessages, the rest after maxDelay, in order', async () => {
    const dir = tempDir('batch-window');
    const sandbox = await startSandboxProcess(dir);
    const gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { groups: { default: { bindClaimedImei: true, batching: { policy: 'window', maxMessages: 5, maxDelayMs: 1500 } } } })).file);
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close(), () => gateway.kill(), () => sandbox.process.kill());
    // The envelope names the IMEI bound to the SIM; a claimed one binds only where the group trusts claims.
    const imsi = '001010000000911';
    const sent = Array.from({ length: 12 }, (_, i) => JSON.stringify({ reading: i }));
    for (const body of sent) expect((await post(gateway.httpPort, imsi, 'meter', body)).status).toBe(202);
    await observer.waitUntil((m) => readings(m, `sim-${imsi}`).length >= 12, 20_000);
    expect(readings(observer.messages, `sim-${imsi}`)).toEqual(sent);
    expect(batchesOf(observer.messages, `sim-${imsi}`).map((b) => b.length)).toEqual([5, 5, 2]);
    const raw = JSON.parse(observer.messages.find((m) => m.topic === `devices/sim-${imsi}/batch`)!.payload.toString());
    expect(raw).toMatchObject({ v: 2, imsi, imei: IMEI, thing: `sim-${imsi}`, topics: ['meter'] });
    expect(raw.m[0]).toEqual([0, 0, { reading: 0 }]);
  });

  it('window with drop-oldest: readings dropped from an open batch never go up', async () => {
    const dir = tempDir('batch-window-drop');
    const sandbox = await startSandboxProcess(dir);
    const gateway = await startGatewayProcess(
      (
        await gatewayConfig(dir, sandbox, {
          storage: { outbox: { perDeviceMaxRows: 3 } },
          groups: { default: { overflow: 'drop-oldest', batching: { policy: 'window', maxMessages: 10, maxDelayMs: 2000 } } },
        })
      ).file,
    );
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close(), () => gateway.kill(), () => sandbox.process.kill());
    const imsi = '001010000000915';
    // All five land in one open window; the first two are dropped to keep three.
    for (let i = 0; i < 5; i++) expect((await post(gateway.httpPort, imsi, 'meter', `d${i}`)).status).toBe(202);
    await observer.waitUntil((m) => batchesOf(m, `sim-${imsi}`).length >= 1, 15_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(readings(observer.messages, `sim-${imsi}`)).toEqual(['d2', 'd3', 'd4']);
  });

  it('hot reload mid-stream changes the batching without loss or duplicates; a broken file keeps the running config', async () => {
    const dir = tempDir('batch-reload');
    const sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox);
    const config = parse(readFileSync(cfg.file, 'utf8'));
    config.log.level = 'info'; // the reload is reported at info
    writeFileSync(cfg.file, stringify(config));
    const gateway = await startGatewayProcess(cfg.file);
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close(), () => gateway.kill(), () => sandbox.process.kill());
    const imsi = '001010000000921';
    const thing = `sim-${imsi}`;
    const sent: string[] = [];
    const send = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const body = `r${String(sent.length).padStart(3, '0')}`;
        expect((await post(gateway.httpPort, imsi, 'meter', body)).status).toBe(202);
        sent.push(body);
      }
    };
    await send(10); // immediate
    await observer.waitUntil((m) => readings(m, thing).length >= 10); // queued ones would take the new policy
    config.groups = { default: { batching: { policy: 'window', maxMessages: 10, maxDelayMs: 1000 } } };
    writeFileSync(cfg.file, stringify(config));
    await gateway.waitFor('configuration reloaded', 10_000);
    await send(20); // now batched
    writeFileSync(cfg.file, 'groups:\n  default:\n    batching:\n      policy: sometimes\n');
    await gateway.waitFor('configuration not reloaded', 10_000);
    expect(gateway.output).toContain('groups.default.batching.policy');
    await send(10); // still batched: the running config stayed
    await observer.waitUntil((m) => readings(m, thing).length >= sent.length, 20_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(readings(observer.messages, thing)).toEqual(sent);
    const batches = batchesOf(observer.messages, thing);
    expect(batches.map((b) => b.length)).toEqual([10, 10, 10]);
    expect(observer.messages.filter((m) => m.topic === `devices/${thing}/meter`)).toHaveLength(10);
  });

  it('SIGTERM sends open batches before exiting; SIGKILL loses nothing acknowledged', async () => {
    const dir = tempDir('batch-term');
    const sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, { groups: { default: { batching: { policy: 'window', maxMessages: 100, maxDelayMs: 3600_000 } } } });
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close(), () => sandbox.process.kill());
    const imsi = '001010000000931';
    let gateway = await startGatewayProcess(cfg.file);
    for (const b of ['t1', 't2', 't3']) expect((await post(gateway.httpPort, imsi, 'meter', b)).status).toBe(202);
    await new Promise((r) => setTimeout(r, 1000)); // vended, session up, batch open
    expect(readings(observer.messages, `sim-${imsi}`)).toEqual([]);
    expect(await gateway.kill('SIGTERM')).toBe(0);
    await observer.waitUntil((m) => readings(m, `sim-${imsi}`).length >= 3, 10_000);
    expect(readings(observer.messages, `sim-${imsi}`)).toEqual(['t1', 't2', 't3']);

    gateway = await startGatewayProcess(cfg.file);
    for (const b of ['k1', 'k2']) expect((await post(gateway.httpPort, imsi, 'meter', b)).status).toBe(202);
    await gateway.kill('SIGKILL');
    const config = parse(readFileSync(cfg.file, 'utf8'));
    config.groups.default.batching.maxDelayMs = 500;
    writeFileSync(cfg.file, stringify(config));
    gateway = await startGatewayProcess(cfg.file);
    cleanups.push(() => gateway.kill());
    await observer.waitUntil((m) => readings(m, `sim-${imsi}`).length >= 5, 15_000);
    expect(readings(observer.messages, `sim-${imsi}`)).toEqual(['t1', 't2', 't3', 'k1', 'k2']);
    // Three gateway starts, one with vending: on a busy machine the default 60 s is not enough.
  }, 120_000);

  it('a full outbox refuses new messages (reject-new) or drops the device\'s oldest (drop-oldest), visibly', async () => {
    const dir = tempDir('batch-quota');
    const sandbox = await startSandboxProcess(dir);
    // Upstream unreachable: messages stay in the outbox.
    const gateway = await startGatewayProcess(
      (
        await gatewayConfig(dir, sandbox, {
          upstreamPort: 1,
          storage: { outbox: { perDeviceMaxRows: 3 } },
          groups: { default: { overflow: 'reject-new' }, lossy: { overflow: 'drop-oldest' } },
        })
      ).file,
    );
    cleanups.push(() => gateway.kill(), () => sandbox.process.kill());
    const strict = '001010000000941';
    for (let i = 0; i < 3; i++) expect((await post(gateway.httpPort, strict, 'm', `s${i}`)).status).toBe(202);
    const refused = await post(gateway.httpPort, strict, 'm', 's3');
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBeTruthy();
    expect(await refused.json()).toMatchObject({ error: 'outbox_full' });
    // MQTT 3.1.1 has no PUBACK reason code: the connection is closed instead of acknowledging.
    const { client } = await connectDevice(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(strict, IMEI));
    const wasClosed = closed(client);
    client.publish('m', 's4', { qos: 1 });
    await wasClosed;
    client.end(true);

    const lossy = '001010000000942';
    const db = await gatewayState(join(dir, 'gateway'), { writable: true });
    await db.run("INSERT INTO sims (imsi, group_name, thing_name, created_at) VALUES (?, 'lossy', ?, ?)", lossy, `sim-${lossy}`, Date.now());
    await db.close();
    for (let i = 0; i < 5; i++) expect((await post(gateway.httpPort, lossy, 'm', `l${i}`)).status).toBe(202);
    const ro = await gatewayState(join(dir, 'gateway'));
    const left = (await ro.all<{ payload: Buffer }>('SELECT payload FROM outbox WHERE imsi = ? ORDER BY id', lossy)).map((r) => String(r.payload));
    const dropped = await ro.all<{ detail: string }>("SELECT detail FROM audit WHERE imsi = ? AND kind = 'message_dropped' ORDER BY id", lossy);
    const strictLeft = await ro.get('SELECT COUNT(*) AS n FROM outbox WHERE imsi = ?', strict);
    await ro.close();
    expect(left).toEqual(['l2', 'l3', 'l4']);
    expect(dropped).toHaveLength(2);
    expect(strictLeft).toEqual({ n: 3 });
    await new Promise((r) => setTimeout(r, 100));
    const metrics = await scrapeMetrics(gateway.adminPort);
    expect(metrics).toMatch(/simbridge_messages_dropped_total\{group="lossy",reason="outbox_full"\} 2/);
    expect(metrics).toMatch(/simbridge_refusals_total\{protocol="http",reason="outbox_full"\} 1/);
   }, 120_000);
});
