import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { deviceOptions, Observer } from './helpers/mqtt.ts';
import { withGatewayState } from './helpers/storage-mode.ts';

const IMSI = '001010000000011';
const IMEI = '490154203237518';

describe('a device message reaches the sandbox IoT Core end to end', () => {
  const dir = tempDir('e2e');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox)).file);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('delivers an MQTT QoS 1 message with the exact binary payload to devices/{thing}/{topic}', async () => {
    const payload = Buffer.concat([Buffer.from([0x00, 0xff, 0x10]), randomBytes(512)]);
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(IMSI, IMEI));
    await device.publishAsync('telemetry/power', payload, { qos: 1 });
    await device.endAsync();
    await observer.waitUntil((m) => m.some((x) => x.payload.equals(payload)));
    const got = observer.messages.find((x) => x.payload.equals(payload))!;
    expect(got.topic).toBe(`devices/sim-${IMSI}/telemetry/power`);
  });

  it('delivers an HTTP POST /topics/{topic}?qos=1 with the exact bytes, after a 202', async () => {
    const payload = randomBytes(300);
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/topics/status/battery?qos=1`, {
      method: 'POST',
      headers: { 'x-imsi': IMSI, 'x-imei': IMEI, 'content-type': 'application/octet-stream' },
      body: payload,
    });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { status: string; id: number; thing: string };
    expect(body.status).toBe('accepted');
    expect(body.thing).toBe(`sim-${IMSI}`);
    await observer.waitUntil((m) => m.some((x) => x.payload.equals(payload)));
    expect(observer.messages.find((x) => x.payload.equals(payload))!.topic).toBe(`devices/sim-${IMSI}/status/battery`);
  });

  it('delivers a new device\'s burst, sent while it is being vended, once each and in order', async () => {
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions('001010000000012', IMEI));
    const bodies = Array.from({ length: 40 }, (_, i) => `burst-${i}`);
    // One at a time, so commits keep arriving while the first ones wait for vending.
    for (const b of bodies) {
      await device.publishAsync('burst', b, { qos: 1 });
      await new Promise((r) => setTimeout(r, 5));
    }
    await device.endAsync();
    const ofBurst = () => observer.messages.filter((x) => x.topic === 'devices/sim-001010000000012/burst').map((x) => x.payload.toString());
    await observer.waitUntil(() => ofBurst().length >= bodies.length);
    await new Promise((r) => setTimeout(r, 500)); // room for a duplicate to show up
    expect(ofBurst()).toEqual(bodies);
  });

  it('vended the device once and keeps its private key encrypted at rest', async () => {
    const rows = await withGatewayState(join(dir, 'gateway'), (db) => db.all<{ step: string; key_enc: Buffer; cert_id: string }>('SELECT step, key_enc, cert_id FROM credentials WHERE imsi = ?', IMSI));
    expect(rows).toHaveLength(1);
    expect(rows[0].step).toBe('ready');
    expect(rows[0].cert_id).toMatch(/^[0-9a-f]{64}$/);
    expect(rows[0].key_enc.toString('latin1')).not.toContain('PRIVATE KEY');
  });
});

describe('no acknowledged message is lost when simbridge is killed', () => {
  const dir = tempDir('kill');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess | undefined;
  let observer: Observer;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('delivers every message acked before SIGKILL after a restart', async () => {
    const config = await gatewayConfig(dir, sandbox);
    gateway = await startGatewayProcess(config.file);
    const acked: string[] = [];
    // Several devices, so some are still being vended when the process dies.
    const devices = await Promise.all(
      ['001010000000021', '001010000000022', '001010000000023'].map((imsi) =>
        mqtt.connectAsync(`mqtt://127.0.0.1:${gateway!.mqttPort}`, deviceOptions(imsi, IMEI)),
      ),
    );
    const sends = devices.flatMap((d, i) =>
      Array.from({ length: 150 }, (_, n) => {
        const body = `dev${i}-msg${n}`;
        return d.publishAsync('seq', body, { qos: 1 }).then(() => acked.push(body), () => undefined);
      }),
    );
    // Kill as soon as some acks are in, while the rest are in flight.
    while (acked.length < 100) await new Promise((r) => setTimeout(r, 2));
    await gateway.kill('SIGKILL');
    // Unacknowledged publishes fail when the clients are closed; only those acked before count.
    devices.forEach((d) => d.end(true));
    await Promise.allSettled(sends);
    const ackedAtKill = [...acked];
    expect(ackedAtKill.length).toBeGreaterThanOrEqual(100);

    gateway = await startGatewayProcess(config.file);
    await observer.waitUntil((m) => {
      const seen = new Set(m.map((x) => x.payload.toString()));
      return ackedAtKill.every((b) => seen.has(b));
    }, 45_000);
    const seen = new Set(observer.messages.map((x) => x.payload.toString()));
    expect(ackedAtKill.filter((b) => !seen.has(b))).toEqual([]);
  });
});
