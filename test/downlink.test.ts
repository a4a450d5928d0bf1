import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectCloudApp } from './helpers/cloud.ts';
import { deviceOptions, Observer, subscribeCodes } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { withGatewayState } from './helpers/storage-mode.ts';

const IMEI = '490154203237518';
const A = '001010000000401';
const B = '001010000000402';
const H = '001010000000403';

function nextMessage(client: MqttClient, timeoutMs = 10_000): Promise<{ topic: string; payload: Buffer; qos: number }> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no message')), timeoutMs);
    client.once('message', (topic, payload, packet) => {
      clearTimeout(t);
      resolve({ topic, payload: Buffer.from(payload), qos: packet.qos });
    });
  });
}

describe('commands down to devices', () => {
  const dir = tempDir('downlink');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let cloud: MqttClient;
  let url: string;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      groups: { default: { lock: 'any', httpDownlink: { topics: ['commands/#'], maxMessages: 3 } } },
    });
    gateway = await startGatewayProcess(cfg.file);
    url = `mqtt://127.0.0.1:${gateway.mqttPort}`;
    cloud = await connectCloudApp(sandbox);
  });

  afterAll(async () => {
    await cloud?.endAsync();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('forwards what arrives on the device\'s upstream subscription, mapped back to its own topic, with its QoS', async () => {
    const device = await mqtt.connectAsync(url, deviceOptions(A, IMEI));
    const granted = await device.subscribeAsync('commands/#', { qos: 1 });
    expect(granted[0]!.qos).toBe(1);
    const got = nextMessage(device);
    await cloud.publishAsync(`devices/sim-${A}/commands/reboot`, Buffer.from([1, 2, 3]), { qos: 1 });
    const msg = await got;
    expect(msg.topic).toBe('commands/reboot');
    expect(msg.payload).toEqual(Buffer.from([1, 2, 3]));
    expect(msg.qos).toBe(1);
    await device.endAsync();
  });

  it('never lets a device hear another device\'s topics, whatever filter it sends', async () => {
    const a = await mqtt.connectAsync(url, deviceOptions(A, IMEI));
    const b = await mqtt.connectAsync(url, deviceOptions(B, IMEI));
    expect(await subscribeCodes(a, [`$aws/things/sim-${B}/shadow/#`, '$SYS/#', '$aws/events/#'], 1)).toEqual([128, 128, 128]);
    // '#' maps to devices/sim-A/#: still only its own namespace.
    expect(await subscribeCodes(a, ['#'], 0)).toEqual([0]);
    await b.subscribeAsync('commands/#', { qos: 1 });
    const heardByA: string[] = [];
    a.on('message', (topic) => heardByA.push(topic));
    const gotB = nextMessage(b);
    await cloud.publishAsync(`devices/sim-${B}/commands/open`, 'for-b', { qos: 1 });
    expect((await gotB).topic).toBe('commands/open');
    // And a device's uplink never reaches another device through the local broker.
    await b.publishAsync('commands/open', 'uplink-from-b', { qos: 1 });
    await new Promise((r) => setTimeout(r, 500));
    expect(heardByA).toEqual([]);
    await a.endAsync();
    await b.endAsync();
  });

  it('delivers with overlapping subscriptions and stays up', async () => {
    const a = await mqtt.connectAsync(url, deviceOptions(A, IMEI));
    await a.subscribeAsync('alerts/#', { qos: 1 });
    await a.subscribeAsync('alerts/+', { qos: 1 });
    const got = nextMessage(a);
    await cloud.publishAsync(`devices/sim-${A}/alerts/fire`, 'hot', { qos: 1 });
    expect((await got).payload.toString()).toBe('hot');
    await new Promise((r) => setTimeout(r, 300));
    expect(gateway.child.exitCode).toBeNull();
    await a.endAsync();
  });

  it('lets a device reach its own shadow, and only its own', async () => {
    const a = await mqtt.connectAsync(url, deviceOptions(A, IMEI));
    const [g] = await a.subscribeAsync(`$aws/things/sim-${A}/shadow/update/accepted`, { qos: 1 });
    expect(g!.qos).toBe(1);
    const got = nextMessage(a);
    await cloud.publishAsync(`$aws/things/sim-${A}/shadow/update/accepted`, '{"state":{}}', { qos: 1 });
    expect((await got).topic).toBe(`$aws/things/sim-${A}/shadow/update/accepted`);
    await a.endAsync();
  });

  it('holds downlink for an HTTP device and returns it once, on its next POST and by GET /v1/downlink', async () => {
    const post = async (body: string) => {
      const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/topics/meter?qos=1`, { method: 'POST', headers: { 'x-imsi': H, 'x-imei': IMEI }, body });
      expect(res.status).toBe(202);
      return (await res.json()) as { downlink: Array<{ topic: string; payload: string; encoding: string }> };
    };
    expect((await post('first')).downlink).toEqual([]); // the first request subscribes
    // Wait until the subscription is live upstream (vending + connect), then command the device.
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`, `devices/sim-${H}/#`);
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'first'));
    await observer.close();
    await new Promise((r) => setTimeout(r, 300));
    await cloud.publishAsync(`devices/sim-${H}/commands/valve`, 'open', { qos: 1 });
    await cloud.publishAsync(`devices/sim-${H}/commands/bin`, Buffer.from([0xff, 0x00]), { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    const second = await post('second');
    expect(second.downlink).toEqual([
      expect.objectContaining({ topic: 'commands/valve', payload: 'open', encoding: 'utf8' }),
      expect.objectContaining({ topic: 'commands/bin', payload: Buffer.from([0xff, 0x00]).toString('base64'), encoding: 'base64' }),
    ]);
    expect((await post('third')).downlink).toEqual([]);
    await cloud.publishAsync(`devices/sim-${H}/commands/later`, 'x', { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/v1/downlink`, { headers: { 'x-imsi': H, 'x-imei': IMEI } });
    expect(((await res.json()) as { messages: unknown[] }).messages).toEqual([expect.objectContaining({ topic: 'commands/later' })]);
  });

  it('keeps at most maxMessages per HTTP device, dropping the oldest with an audit row', async () => {
    for (let i = 0; i < 5; i++) await cloud.publishAsync(`devices/sim-${H}/commands/n`, `n${i}`, { qos: 1 });
    await new Promise((r) => setTimeout(r, 500));
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/v1/downlink`, { headers: { 'x-imsi': H, 'x-imei': IMEI } });
    const { messages } = (await res.json()) as { messages: Array<{ payload: string }> };
    expect(messages.map((m) => m.payload)).toEqual(['n2', 'n3', 'n4']);
    const dropped = await withGatewayState(join(dir, 'gateway'), (db) => db.get("SELECT COUNT(*) AS n FROM audit WHERE imsi = ? AND kind = 'downlink_dropped'", H));
    expect(dropped).toEqual({ n: 2 });
  });
});
