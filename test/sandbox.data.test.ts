// The sandbox data plane (MQTT over mutual TLS) and observer, with mqtt.js
// clients using certificates vended through the real @aws-sdk/client-iot.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import mqtt, { type MqttClient } from 'mqtt';
import { AttachPolicyCommand, CreateCertificateFromCsrCommand, type IoTClient, UpdateCertificateCommand } from '@aws-sdk/client-iot';
import { CertificateAuthority } from '../sandbox/ca.ts';
import { type Sandbox, startSandbox } from '../sandbox/index.ts';
import { makeDeviceCsr, sandboxIotClient, type VendedThing, vendThing } from '../sandbox/testkit.ts';

let dataDir: string;
let sb: Sandbox;
let iot: IoTClient;
let thingA: VendedThing;
let thingB: VendedThing;
const clients: MqttClient[] = [];

function connectDevice(dev: { certPem: string; keyPem: string }, clientId: string, extra: Partial<mqtt.IClientOptions> = {}): Promise<MqttClient> {
  const p = mqtt.connectAsync(
    `mqtts://${sb.dataHost}:${sb.dataPort}`,
    {
      ca: sb.caPem,
      cert: dev.certPem,
      key: dev.keyPem,
      clientId,
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 5_000,
      ...extra,
    },
    false,
  );
  return p.then((c) => (clients.push(c), c));
}

async function connectObserver(): Promise<{ client: MqttClient; messages: { topic: string; payload: Buffer; qos: number }[] }> {
  const client = await mqtt.connectAsync({ host: '127.0.0.1', port: sb.observerPort, protocolVersion: 4, reconnectPeriod: 0 });
  clients.push(client);
  const messages: { topic: string; payload: Buffer; qos: number }[] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload, qos: packet.qos }));
  await client.subscribeAsync(['#', '$aws/#'], { qos: 1 });
  return { client, messages };
}

async function until(cond: () => boolean, ms = 3_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** How the broker refused the connection: its CONNACK return code, or 'closed' for a socket closed without one (IoT Core). */
async function refusedCode(p: Promise<MqttClient>): Promise<number | 'closed' | undefined> {
  try {
    await p;
  } catch (err) {
    return (err as { code?: number }).code ?? ((err as Error).message === "Couldn't connect to server" ? 'closed' : undefined);
  }
  throw new Error('expected the connection to be refused');
}

/** Resolves when the broker (or anyone) closes the client's connection. */
const whenClosed = (c: MqttClient) => new Promise<void>((resolve) => c.once('close', () => resolve()));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'simbridge-sandbox-'));
  sb = await startSandbox({ dataDir, controlPort: 0, dataPort: 0, observerPort: 0 });
  iot = sandboxIotClient(sb.controlEndpoint);
  [thingA, thingB] = await Promise.all([vendThing(iot, 'thing-a'), vendThing(iot, 'thing-b')]);
});

afterAll(async () => {
  for (const c of clients) c.end(true);
  iot?.destroy();
  await sb?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('data plane', () => {
  it('lets a thing publish on its own topics; the observer sees the exact bytes', async () => {
    const observer = await connectObserver();
    const device = await connectDevice(thingA, 'thing-a');
    const received: Buffer[] = [];
    device.on('message', (_t, payload) => received.push(payload));
    const granted = await device.subscribeAsync('things/thing-a/cmd', { qos: 2 });
    expect(granted[0]!.qos).toBe(1); // IoT Core grants at most QoS 1

    const payload = Buffer.from(Array.from({ length: 512 }, (_, i) => i % 256)); // every byte value, twice
    await device.publishAsync('things/thing-a/telemetry', payload, { qos: 1 });
    await device.publishAsync('things/thing-a/cmd', Buffer.from([0xff, 0x00, 0xfe]), { qos: 0 });

    await until(() => observer.messages.length >= 2 && received.length >= 1);
    const telemetry = observer.messages.find((m) => m.topic === 'things/thing-a/telemetry')!;
    expect(Buffer.compare(telemetry.payload, payload)).toBe(0);
    expect(telemetry.qos).toBe(1);
    const cmd = observer.messages.find((m) => m.topic === 'things/thing-a/cmd')!;
    expect([...cmd.payload]).toEqual([0xff, 0x00, 0xfe]);
    expect(cmd.qos).toBe(0);
    expect([...received[0]!]).toEqual([0xff, 0x00, 0xfe]); // iot:Receive on its own topic

    const state = (await (await fetch(`${sb.controlEndpoint}/_sandbox/state`)).json()) as { connections: { clientId: string }[] };
    expect(state.connections).toContainEqual(expect.objectContaining({ clientId: 'thing-a', certificateId: thingA.certificateId }));
  });

  it('refuses CONNECT with another client id by closing the socket, without CONNACK', async () => {
    expect(await refusedCode(connectDevice(thingA, 'thing-b'))).toBe('closed');
  });

  it('refuses a certificate with no thing attached (IsAttached condition)', async () => {
    const loose = await vendThing(iot, 'thing-loose', { attachThing: false });
    expect(await refusedCode(connectDevice(loose, 'thing-loose'))).toBe('closed');
  });

  it('refuses a CA-signed certificate that is not registered', async () => {
    const ca = await CertificateAuthority.open(dataDir);
    const { keyPem, csrPem } = await makeDeviceCsr('thing-a');
    const rogue = await ca.signCsr(csrPem, 1);
    expect(await refusedCode(connectDevice({ certPem: rogue.pem, keyPem }, 'thing-a'))).toBe('closed');
  });

  it("closes the connection on a publish to another thing's topic; nothing is forwarded", async () => {
    const observer = await connectObserver();
    const device = await connectDevice(thingA, 'thing-a');
    const gone = whenClosed(device);
    device.publish('things/thing-b/telemetry', 'sneaky', { qos: 1 });
    await gone;
    await sleep(50);
    expect(observer.messages.filter((m) => m.topic === 'things/thing-b/telemetry')).toEqual([]);
  });

  it("closes the connection on a SUBSCRIBE to another thing's topic filter, as IoT Core does", async () => {
    const device = await connectDevice(thingA, 'thing-a');
    const gone = whenClosed(device);
    device.subscribe('things/thing-b/#', { qos: 1 });
    await gone;
    expect(device.connected).toBe(false);
    const again = await connectDevice(thingA, 'thing-a');
    await again.publishAsync('things/thing-a/telemetry', 'back again', { qos: 1 });
  });

  it('raises a keepalive below 30 s to 30 and refuses one above 1,200 s', async () => {
    const short = await connectDevice(thingA, 'thing-a', { keepalive: 5 });
    // A client silent for 10 s (twice its own keepalive) is still connected: the server counts 30 s.
    const pings = short as unknown as { _destroyKeepaliveManager(): void; keepaliveManager: unknown };
    pings._destroyKeepaliveManager();
    expect(pings.keepaliveManager).toBeNull();
    await sleep(10_000);
    expect(short.connected).toBe(true);
    await short.publishAsync('things/thing-a/telemetry', 'alive', { qos: 1 });
    expect(await refusedCode(connectDevice(thingA, 'thing-a', { keepalive: 1201 }))).toBe('closed');
  }, 20_000);

  it("matches '#' only below its level, never the parent topic itself, and wants iot:RetainPublish for a retained publish", async () => {
    const cloud = await vendThing(iot, 'fidelity-cloud', { policyName: 'fidelity-all', policyDocument: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'iot:*', Resource: '*' }] }) });
    const app = await connectDevice(cloud, 'fidelity-cloud');
    const device = await connectDevice(thingA, 'thing-a');
    const got: string[] = [];
    device.on('message', (topic) => got.push(topic));
    await device.subscribeAsync('things/thing-a/cmd/#', { qos: 1 });
    await app.publishAsync('things/thing-a/cmd', 'parent', { qos: 1 });
    await app.publishAsync('things/thing-a/cmd/reboot', 'child', { qos: 1 });
    await until(() => got.length >= 1);
    await sleep(200);
    expect(got).toEqual(['things/thing-a/cmd/reboot']);
    // The thing's policy allows iot:Publish but not iot:RetainPublish.
    const gone = whenClosed(device);
    device.publish('things/thing-a/telemetry', 'kept', { qos: 1, retain: true });
    await gone;
  });

  it('serves the shadow: an update is answered on /accepted and /delta, a document over 8 KB or bad JSON on /rejected', async () => {
    const all = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'iot:*', Resource: '*' }] });
    const cloud = await vendThing(iot, 'shadow-app', { policyName: 'fidelity-shadow-all', policyDocument: all });
    const app = await connectDevice(cloud, 'shadow-app');
    const got: { topic: string; body: Record<string, unknown> }[] = [];
    app.on('message', (topic, payload) => got.push({ topic: topic.split('/').slice(-2).join('/'), body: JSON.parse(payload.toString()) }));
    await app.subscribeAsync('$aws/things/shadow-app/shadow/update/#', { qos: 1 });
    const update = (body: string | Buffer) => app.publishAsync('$aws/things/shadow-app/shadow/update', body, { qos: 1 });
    await update(JSON.stringify({ state: { desired: { led: 'on' }, reported: { led: 'off' } }, clientToken: 't1' }));
    await until(() => got.length >= 2);
    expect(got.map((m) => m.topic).sort()).toEqual(['update/accepted', 'update/delta']);
    expect(got.find((m) => m.topic === 'update/delta')!.body.state).toEqual({ led: 'on' });
    expect(got.find((m) => m.topic === 'update/accepted')!.body.clientToken).toBe('t1');
    got.length = 0;
    await update(JSON.stringify({ state: { reported: { blob: 'x'.repeat(9000) } } }));
    await update('not json');
    await until(() => got.length >= 2);
    expect(got.map((m) => [m.topic, m.body.code])).toEqual([['update/rejected', 413], ['update/rejected', 400]]);
  });

  it('drops publishes beyond 100 per second per connection without PUBACK, and keeps the connection', async () => {
    const observer = await connectObserver();
    const device = await connectDevice(thingB, 'thing-b');
    let acked = 0;
    for (let i = 0; i < 150; i++) device.publish('things/thing-b/burst', `b${i}`, { qos: 1 }, (err) => void (err || acked++));
    await sleep(700);
    expect(acked).toBe(100);
    expect(device.connected).toBe(true);
    expect(observer.messages.filter((m) => m.topic === 'things/thing-b/burst')).toHaveLength(100);
    // A second later the quota has room again.
    await sleep(400);
    await device.publishAsync('things/thing-b/burst', 'later', { qos: 1 });
  });

  it('drops publishes beyond 512 KiB per second per connection without PUBACK', async () => {
    const device = await connectDevice(thingB, 'thing-b');
    let acked = 0;
    for (let i = 0; i < 6; i++) device.publish('things/thing-b/big', Buffer.alloc(100 * 1024), { qos: 1 }, (err) => void (err || acked++));
    await sleep(700);
    expect(acked).toBe(5);
    expect(device.connected).toBe(true);
  });

  it('disconnects on QoS 2 and on payloads above 128 KB', async () => {
    const d1 = await connectDevice(thingA, 'thing-a');
    const c1 = whenClosed(d1);
    d1.publish('things/thing-a/telemetry', 'qos2', { qos: 2 });
    await c1;

    const d2 = await connectDevice(thingB, 'thing-b');
    const c2 = whenClosed(d2);
    d2.publish('things/thing-b/telemetry', Buffer.alloc(128 * 1024 + 1), { qos: 1 });
    await c2;
  });

  it('drops live connections when the certificate is deactivated, and refuses it afterwards', async () => {
    const dev = await vendThing(iot, 'thing-c');
    const device = await connectDevice(dev, 'thing-c');
    const gone = whenClosed(device);
    await iot.send(new UpdateCertificateCommand({ certificateId: dev.certificateId, newStatus: 'INACTIVE' }));
    await gone;
    expect(await refusedCode(connectDevice(dev, 'thing-c'))).toBe('closed');

    await iot.send(new UpdateCertificateCommand({ certificateId: dev.certificateId, newStatus: 'ACTIVE' }));
    const back = await connectDevice(dev, 'thing-c');
    await back.publishAsync('things/thing-c/telemetry', 'back', { qos: 1 });
  });

  it('refuses an INACTIVE certificate that has a policy', async () => {
    const { keyPem, csrPem } = await makeDeviceCsr('thing-a');
    const cert = await iot.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: csrPem }));
    await iot.send(new AttachPolicyCommand({ policyName: 'sandbox-thing-policy', target: cert.certificateArn }));
    expect(await refusedCode(connectDevice({ certPem: cert.certificatePem!, keyPem }, 'thing-a'))).toBe('closed');
  });
});

describe('observer', () => {
  it('is read-only: a publish closes the observer connection and never reaches the data plane', async () => {
    const device = await connectDevice(thingB, 'thing-b');
    const received: string[] = [];
    device.on('message', (topic) => received.push(topic));
    await device.subscribeAsync('things/thing-b/cmd', { qos: 1 });

    const observer = await connectObserver();
    const gone = whenClosed(observer.client);
    observer.client.publish('things/thing-b/cmd', 'injected', { qos: 1 });
    await gone;
    await sleep(100);
    expect(received).toEqual([]);
  });
});

describe('data plane with propagation delays (propagation.certificatesMs, attachmentsMs)', () => {
  it('refuses a new certificate until it has propagated, and drops a deactivated one only after the delay', async () => {
    const delayMs = 1500;
    const slowDir = mkdtempSync(join(tmpdir(), 'simbridge-sandbox-slow-'));
    const slow = await startSandbox({ dataDir: slowDir, controlPort: 0, dataPort: 0, observerPort: 0, propagation: { certificatesMs: delayMs, attachmentsMs: delayMs } });
    const slowIot = sandboxIotClient(slow.controlEndpoint);
    const connect = (dev: VendedThing) =>
      mqtt.connectAsync(`mqtts://${slow.dataHost}:${slow.dataPort}`, { ca: slow.caPem, cert: dev.certPem, key: dev.keyPem, clientId: dev.thingName, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5_000 }, false);
    try {
      const dev = await vendThing(slowIot, 'thing-slow');
      const vendedAt = Date.now();
      // The control plane answered at once; the data plane does not know the certificate yet.
      expect(await refusedCode(connect(dev))).toBe('closed');
      await sleep(Math.max(0, vendedAt + delayMs + 200 - Date.now()));
      const client = await connect(dev);
      clients.push(client);
      const closed = whenClosed(client);
      let closedAt: number | undefined;
      void closed.then(() => (closedAt = Date.now()));
      const deactivatedAt = Date.now();
      await slowIot.send(new UpdateCertificateCommand({ certificateId: dev.certificateId, newStatus: 'INACTIVE' }));
      await sleep(delayMs / 2);
      expect(closedAt).toBeUndefined();
      await closed;
      expect(closedAt! - deactivatedAt).toBeGreaterThanOrEqual(delayMs - 100);
    } finally {
      slowIot.destroy();
      await slow.close();
      rmSync(slowDir, { recursive: true, force: true });
    }
  }, 30_000);
});
