import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { withGatewayState } from './helpers/storage-mode.ts';
import { closed, connectDevice, deviceOptions, Observer, rawExchange } from './helpers/mqtt.ts';

const GOOD_IMSI = '001010000000031';
const IMEI = '490154203237518';

describe('bad input gets its documented refusal and the gateway keeps serving', () => {
  const dir = tempDir('bad');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;
  let url: string;
  let http: string;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox)).file);
    url = `mqtt://127.0.0.1:${gateway.mqttPort}`;
    http = `http://127.0.0.1:${gateway.httpPort}`;
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('refuses an invalid IMSI (CONNACK 4) and an IMEI with a bad check digit (CONNACK 2)', async () => {
    expect((await connectDevice(url, deviceOptions('12ab', IMEI))).code).toBe(4);
    expect((await connectDevice(url, deviceOptions(GOOD_IMSI, '490154203237517'))).code).toBe(2);
  });

  it('answers a CONNECT of a protocol level it does not speak with CONNACK 1 (unacceptable protocol version)', async () => {
    // MQTT-3.1.2-2: level 6 does not exist; 3.1.1 and 5 are taken (test/mqtt5.test.ts).
    const connect = Buffer.from([0x10, 12, 0, 4, ...Buffer.from('MQTT'), 6, 0x02, 0, 60, 0, 0]);
    expect([...(await rawExchange(gateway.mqttPort, connect))]).toEqual([0x20, 2, 0, 1]);
  });

  it('refuses the same over HTTP with 400 and a JSON reason', async () => {
    const res = await fetch(`${http}/topics/t`, { method: 'POST', headers: { 'x-imsi': GOOD_IMSI, 'x-imei': '490154203237517' }, body: 'x' });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: 'invalid_imei' });
    const res2 = await fetch(`${http}/topics/t`, { method: 'POST', body: 'x' });
    expect(res2.status).toBe(400);
    expect(await res2.json()).toMatchObject({ error: 'invalid_imsi' });
  });

  it.each([
    ['a wildcard topic', 'a/+/b', Buffer.from('x'), 1],
    ['a topic over 256 bytes upstream', 'x'.repeat(250), Buffer.from('x'), 1],
    ['a topic over 8 levels upstream', 'a/b/c/d/e/f/g', Buffer.from('x'), 1],
    ['a payload over 128 KB', 'big', Buffer.alloc(131073), 1],
    ['QoS 2', 'qos2', Buffer.from('x'), 2],
  ] as const)('closes the MQTT connection on %s (MQTT 3.1.1 has no PUBACK reason code)', async (_name, topic, payload, qos) => {
    const { code, client } = await connectDevice(url, deviceOptions(GOOD_IMSI, IMEI));
    expect(code).toBe(0);
    const wasClosed = closed(client);
    client.publish(topic, payload, { qos });
    await wasClosed;
    client.end(true);
  });

  it.each([
    ['a payload over 128 KB', 'big', 'qos=1', Buffer.alloc(131073), 413, 'payload_too_large'],
    ['QoS 2', 'q', 'qos=2', Buffer.from('x'), 400, 'qos_not_supported'],
    ['a topic over 8 levels', 'a/b/c/d/e/f/g', 'qos=1', Buffer.from('x'), 400, 'topic_too_deep'],
    ['a wildcard topic', 'a/%23', 'qos=1', Buffer.from('x'), 400, 'topic_wildcard'],
  ] as const)('answers HTTP %s with its status and JSON reason', async (_name, topic, query, body, status, error) => {
    const res = await fetch(`${http}/topics/${topic}?${query}`, { method: 'POST', headers: { 'x-imsi': GOOD_IMSI, 'x-imei': IMEI }, body });
    expect(res.status).toBe(status);
    expect(await res.json()).toMatchObject({ error });
  });

  it('writes refusals that concern a SIM to the audit log', async () => {
    const rows = await withGatewayState(join(dir, 'gateway'), (db) => db.all<{ kind: string }>('SELECT kind FROM audit WHERE imsi = ?', GOOD_IMSI));
    const kinds = rows.map((r) => r.kind);
    expect(kinds).toContain('invalid_imei');
  });

  it('still delivers a well-behaved device after all of that', async () => {
    const device = await mqtt.connectAsync(url, deviceOptions(GOOD_IMSI, IMEI));
    await device.publishAsync('ok', 'still-serving', { qos: 1 });
    await device.endAsync();
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'still-serving'));
    expect(gateway.child.exitCode).toBeNull();
  });
});

describe('unknown SIMs with sims.unknown = reject', () => {
  const dir = tempDir('reject');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { sims: { unknown: 'reject' } })).file);
  });

  afterAll(async () => {
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('refuses them with CONNACK 5 (not authorized) and HTTP 403, and audits it', async () => {
    expect((await connectDevice(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions('001010000000099', IMEI))).code).toBe(5);
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/topics/t`, { method: 'POST', headers: { 'x-imsi': '001010000000099' }, body: 'x' });
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ error: 'unknown_sim' });
    const n = await withGatewayState(join(dir, 'gateway'), (db) => db.get("SELECT COUNT(*) AS n FROM audit WHERE imsi = ? AND kind = 'unknown_sim'", '001010000000099'));
    expect(n).toEqual({ n: 2 });
  });
});
