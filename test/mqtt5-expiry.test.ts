import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import type { IConnackPacket, IPublishPacket, Packet } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectCloudApp } from './helpers/cloud.ts';
import { deviceOptions } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { withGatewayState } from './helpers/storage-mode.ts';

// Commands kept for a sleeping persistent-session device expire after the group's mqttSessions.ttlMs:
// never delivered after it, accounted for when dropped, and an MQTT 5 device is told the time left.
// The upstream session is MQTT 3.1.1, so no expiry arrives from IoT Core: the group's bound is the expiry.

const IMEI = '490154203237518';
const TTL_MS = 3000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('message expiry of commands kept for a sleeping MQTT device', () => {
  const dir = tempDir('mqtt5-expiry');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let cloud: MqttClient;
  let url: string;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      groups: { default: { lock: 'first-contact', bindClaimedImei: true, mqttSessions: { ttlMs: TTL_MS } } },
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

  /** The first column of each row. */
  const query = async <T,>(sql: string, ...args: unknown[]): Promise<T[]> =>
    (await withGatewayState(join(dir, 'gateway'), (db) => db.all(sql, ...args))).map((r) => Object.values(r)[0] as T);
  const kept = async (imsi: string) => (await query<number>('SELECT COUNT(*) FROM mqtt_session_messages WHERE imsi = ?', imsi))[0]!;
  const waitFor = async (what: () => boolean | Promise<boolean>, ms = 10_000) => {
    const until = Date.now() + ms;
    while (!(await what()) && Date.now() < until) await sleep(100);
    return what();
  };
  const persistent = (imsi: string, properties: Record<string, number> = {}) =>
    deviceOptions(imsi, IMEI, { protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 600, ...properties } });

  /** A device that subscribes, leaves, and has `commands` published to it while it is away. */
  async function sleeper(imsi: string, properties: Record<string, number> = {}) {
    const first = await mqtt.connectAsync(url, persistent(imsi, properties));
    await first.subscribeAsync('commands/#', { qos: 1 });
    await first.endAsync();
    await sleep(300);
    let n = 0;
    return async (...payloads: string[]) => {
      for (const p of payloads) await cloud.publishAsync(`devices/sim-${imsi}/commands/c`, p, { qos: 1 });
      n += payloads.length;
      expect(await waitFor(async () => (await kept(imsi)) >= n)).toBe(true);
    };
  }

  it('does not deliver a command that expired while its device slept, and audits it as dropped', async () => {
    const imsi = '001010000000601';
    const send = await sleeper(imsi);
    await send('stale');
    await sleep(TTL_MS + 300);

    const received: string[] = [];
    const again = mqtt.connect(url, persistent(imsi));
    again.on('message', (_t, payload) => received.push(payload.toString()));
    const connack = await new Promise<IConnackPacket>((resolve) => again.on('packetreceive', (p: Packet) => p.cmd === 'connack' && resolve(p)));
    expect(connack.sessionPresent).toBe(true);
    await sleep(1500);
    expect(received).toEqual([]);
    await again.endAsync();

    // The session sweep (every 10 s) drops it with a trace.
    const audited = () => query<string>("SELECT detail FROM audit WHERE imsi = ? AND kind = 'downlink_dropped'", imsi);
    expect(await waitFor(async () => (await audited()).length > 0, 15_000)).toBe(true);
    expect(JSON.parse((await audited())[0]!)).toMatchObject({ topic: 'commands/c', reason: 'expired before its device came back', via: 'mqtt' });
    expect(await kept(imsi)).toBe(0);
  }, 40_000);

  it('tells an MQTT 5 device the time left, and skips a command that expires while it waits behind the Receive Maximum', async () => {
    const imsi = '001010000000602';
    const send = await sleeper(imsi, { receiveMaximum: 1 });
    const t0 = Date.now();
    await send('first', 'expires-waiting');
    await sleep(2000);
    await send('still-valid');

    // Receive Maximum 1: one command in flight at a time. The first PUBACK is held until the second
    // command has expired; the third, still valid, must follow.
    const got: IPublishPacket[] = [];
    const again = mqtt.connect(url, persistent(imsi, { receiveMaximum: 1 }));
    again.on('packetreceive', (p: Packet) => p.cmd === 'publish' && got.push(p));
    again.handleMessage = (packet, done) => {
      if (packet.payload.toString() === 'first') setTimeout(done, Math.max(0, t0 + TTL_MS + 500 - Date.now()));
      else done();
    };
    expect(await waitFor(() => got.length >= 2, 10_000)).toBe(true);
    await sleep(500);
    expect(got.map((p) => p.payload.toString())).toEqual(['first', 'still-valid']);
    // MQTT-3.3.2-6: the interval is what is left of the command's life, in whole seconds.
    const left = got.map((p) => p.properties?.messageExpiryInterval);
    expect(left[0]).toBeGreaterThanOrEqual(1);
    expect(left[0]).toBeLessThanOrEqual(TTL_MS / 1000 - 1);
    expect(left[1]).toBeGreaterThanOrEqual(1);
    expect(left[1]).toBeLessThanOrEqual(TTL_MS / 1000 - 1);
    await again.endAsync();
  }, 40_000);
});
