import { execFile, spawn } from 'node:child_process';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectCloudApp } from './helpers/cloud.ts';
import { findPeer } from './helpers/interop.ts';
import { connectDevice, deviceOptions, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { withGatewayState } from './helpers/storage-mode.ts';

// The device endpoint speaking MQTT 5 (and 3.1.1 beside it) to real clients: mqtt.js, mosquitto_pub and
// mosquitto_sub, and raw packets written with the same codec for what a well-behaved client never sends.

const run = promisify(execFile);
const mosquittoPub = findPeer('mosquitto_pub', 'mosquitto-clients');
const mosquittoSub = findPeer('mosquitto_sub', 'mosquitto-clients');
const IMEI = '490154203237518';
const OTHER_IMEI = '356938035643809';
const v5 = (imsi: string, imei = IMEI, extra: IClientOptions = {}) => deviceOptions(imsi, imei, { protocolVersion: 5, ...extra });

/** The next packet of a kind the client receives. */
function nextPacket<T extends Packet>(client: MqttClient, cmd: T['cmd'], timeoutMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${cmd} within ${timeoutMs} ms`)), timeoutMs);
    const on = (packet: Packet) => {
      if (packet.cmd !== cmd) return;
      clearTimeout(t);
      client.removeListener('packetreceive', on as never);
      resolve(packet as T);
    };
    client.on('packetreceive', on as never);
  });
}

/** Writes raw packets (CONNECT first) and collects every packet the gateway sends until it closes. */
function rawSession(port: number, packets: Array<Packet | Buffer>, level: 4 | 5 = 5, timeoutMs = 8000): Promise<Packet[]> {
  return new Promise((resolve, reject) => {
    const got: Packet[] = [];
    const parser = mqttPacket.parser({ protocolVersion: level });
    parser.on('packet', (p: Packet) => got.push(p));
    const socket = createConnection({ host: '127.0.0.1', port }, () => {
      const [connect, ...rest] = packets.map((p) => (Buffer.isBuffer(p) ? p : mqttPacket.generate(p, { protocolVersion: level })));
      socket.write(connect!);
      // The rest once the CONNACK is in.
      parser.once('packet', () => rest.forEach((b) => socket.write(b)));
    });
    const t = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the gateway did not close within ${timeoutMs} ms; got ${got.map((p) => p.cmd).join(',')}`));
    }, timeoutMs);
    socket.on('data', (c: Buffer) => parser.parse(c));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(t);
      resolve(got);
    });
  });
}

const connectPacket = (imsi: string, properties: Record<string, unknown> = {}): Packet => ({
  cmd: 'connect',
  protocolId: 'MQTT',
  protocolVersion: 5,
  clean: true,
  keepalive: 60,
  clientId: IMEI,
  username: imsi,
  properties,
});

describe('MQTT 5 and 3.1.1 devices on one endpoint', () => {
  const dir = tempDir('mqtt5');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;
  let cloud: MqttClient;
  let url: string;
  let configFile: string;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      listeners: { mqtt: { topicAliasMaximum: 4, receiveMaximum: 20, maxPacketBytes: 140_000 } },
      storage: { outbox: { perDeviceMaxBytes: 60_000 } },
      groups: { default: { lock: 'first-contact', bindClaimedImei: true, mqttSessions: { maxMessages: 2 } } },
    });
    configFile = cfg.file;
    gateway = await startGatewayProcess(cfg.file);
    url = `mqtt://127.0.0.1:${gateway.mqttPort}`;
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cloud = await connectCloudApp(sandbox);
  });

  afterAll(async () => {
    await cloud?.endAsync();
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  const seen = (payload: string) => observer.waitUntil((m) => m.some((x) => x.payload.toString() === payload));
  const upstreamTopicOf = (payload: string) => observer.messages.find((x) => x.payload.toString() === payload)?.topic;

  it('takes an mqtt.js MQTT 5 device and advertises its limits in the CONNACK', async () => {
    const imsi = '001010000000501';
    const client = mqtt.connect(url, v5(imsi));
    const connack = await nextPacket<mqttPacket.IConnackPacket>(client, 'connack');
    expect(connack.reasonCode).toBe(0);
    expect(connack.properties).toMatchObject({ maximumQoS: 1, retainAvailable: false, maximumPacketSize: 140_000, receiveMaximum: 20, topicAliasMaximum: 4 });
    await client.publishAsync('telemetry', 'v5-hello', { qos: 1 });
    await seen('v5-hello');
    expect(upstreamTopicOf('v5-hello')).toBe(`devices/sim-${imsi}/telemetry`);
    await client.endAsync();
  });

  it('still takes mqtt.js at 3.1.1 beside it', async () => {
    const client = await mqtt.connectAsync(url, deviceOptions('001010000000502', IMEI));
    await client.publishAsync('telemetry', 'v4-hello', { qos: 1 });
    await seen('v4-hello');
    await client.endAsync();
  });

  it('tells an MQTT 5 device why its CONNECT is refused: 0x86 bad IMSI, 0x85 bad IMEI, 0x87 IMEI lock mismatch', async () => {
    expect((await connectDevice(url, v5('12ab'))).code).toBe(0x86);
    expect((await connectDevice(url, v5('001010000000503', '490154203237517'))).code).toBe(0x85);
    // The same refusals at 3.1.1 keep their return codes.
    expect((await connectDevice(url, deviceOptions('12ab', IMEI))).code).toBe(4);
    expect((await connectDevice(url, deviceOptions('001010000000503', '490154203237517'))).code).toBe(2);
  });

  it('refuses a SIM locked to another device with 0x87 and a reason string', async () => {
    const imsi = '001010000000504';
    const first = await mqtt.connectAsync(url, v5(imsi)); // first contact binds the IMEI
    await first.endAsync();
    const client = mqtt.connect(url, v5(imsi, OTHER_IMEI));
    const connack = await nextPacket<mqttPacket.IConnackPacket>(client, 'connack');
    client.end(true);
    expect(connack.reasonCode).toBe(0x87);
    expect(connack.properties?.reasonString).toBeTruthy();
  });

  it('answers a refused QoS 1 publish with its PUBACK reason code and keeps the connection: 0x90 topic, 0x97 quota', async () => {
    const client = await mqtt.connectAsync(url, v5('001010000000505'));
    const wildcard = nextPacket<mqttPacket.IPubackPacket>(client, 'puback');
    client.publish('a/+/b', 'x', { qos: 1 }, () => undefined);
    expect((await wildcard).reasonCode).toBe(0x90);
    const deep = nextPacket<mqttPacket.IPubackPacket>(client, 'puback');
    client.publish('a/b/c/d/e/f/g', 'x', { qos: 1 }, () => undefined);
    expect((await deep).reasonCode).toBe(0x90);
    // More than the device's outbox share (60,000 bytes here) is over quota.
    const quota = nextPacket<mqttPacket.IPubackPacket>(client, 'puback');
    client.publish('big', Buffer.alloc(70_000), { qos: 1 }, () => undefined);
    const puback = await quota;
    expect(puback.reasonCode).toBe(0x97);
    expect(puback.properties?.reasonString).toMatch(/outbox is full/);
    expect(client.connected).toBe(true);
    await client.publishAsync('telemetry', 'after-refusals', { qos: 1 });
    await seen('after-refusals');
    await client.endAsync();
  });

  it.each([
    ['a payload over 128 KB', 'big', Buffer.alloc(131_073), { qos: 1 }, 0x95],
    ['QoS 2', 'q2', Buffer.from('x'), { qos: 2 }, 0x9b],
    ['a retained publish', 'keep', Buffer.from('x'), { qos: 1, retain: true }, 0x9a],
  ] as const)('disconnects an MQTT 5 device on %s with DISCONNECT %s', async (_name, topic, payload, options, code) => {
    const client = await mqtt.connectAsync(url, v5('001010000000506'));
    const disconnect = nextPacket<mqttPacket.IDisconnectPacket>(client, 'disconnect');
    client.publish(topic, payload, options as never, () => undefined);
    const got = await disconnect;
    expect(got.reasonCode).toBe(code);
    expect(got.properties?.reasonString).toBeTruthy();
    client.end(true);
  });

  it('answers a packet over the Maximum Packet Size with DISCONNECT 0x95 before reading it whole', async () => {
    const publish = mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(150_000), qos: 0, dup: false, retain: false }, { protocolVersion: 5 });
    const got = await rawSession(gateway.mqttPort, [connectPacket('001010000000507'), publish.subarray(0, 1000)]);
    expect(got.map((p) => p.cmd)).toEqual(['connack', 'disconnect']);
    expect((got[1] as mqttPacket.IDisconnectPacket).reasonCode).toBe(0x95);
  });

  it('resolves topic aliases both ways of setting them, and refuses alias 0 and one above the maximum with 0x94', async () => {
    const imsi = '001010000000508';
    const client = await mqtt.connectAsync(url, v5(imsi));
    await client.publishAsync('alias/first', 'alias-1', { qos: 1, properties: { topicAlias: 2 } });
    await client.publishAsync('', 'alias-2', { qos: 1, properties: { topicAlias: 2 } });
    await seen('alias-2');
    expect(upstreamTopicOf('alias-1')).toBe(`devices/sim-${imsi}/alias/first`);
    expect(upstreamTopicOf('alias-2')).toBe(`devices/sim-${imsi}/alias/first`);
    await client.endAsync();

    const publishWithAlias = (topicAlias: number, topic = 't') =>
      ({ cmd: 'publish', topic, payload: Buffer.from('x'), qos: 0, dup: false, retain: false, properties: { topicAlias } }) as Packet;
    for (const alias of [0, 5]) {
      const got = await rawSession(gateway.mqttPort, [connectPacket(imsi), publishWithAlias(alias)]);
      expect(got.map((p) => p.cmd)).toEqual(['connack', 'disconnect']);
      expect((got[1] as mqttPacket.IDisconnectPacket).reasonCode).toBe(0x94);
    }
    // An alias used before it was set is a protocol error (0x82).
    const unset = await rawSession(gateway.mqttPort, [connectPacket(imsi), publishWithAlias(3, '')]);
    expect((unset[1] as mqttPacket.IDisconnectPacket).reasonCode).toBe(0x82);
  });

  it('disconnects a device that exceeds the Receive Maximum with 0x93', async () => {
    const publishes = Array.from({ length: 60 }, (_, i) =>
      mqttPacket.generate({ cmd: 'publish', topic: 'flood', payload: Buffer.from(String(i)), qos: 1, messageId: i + 1, dup: false, retain: false }, { protocolVersion: 5 }),
    );
    // All in one write: the gateway sees 60 unanswered QoS 1 publishes against a Receive Maximum of 20.
    const got = await rawSession(gateway.mqttPort, [connectPacket('001010000000509'), Buffer.concat(publishes)]);
    const disconnect = got.find((p) => p.cmd === 'disconnect') as mqttPacket.IDisconnectPacket | undefined;
    expect(disconnect?.reasonCode).toBe(0x93);
  });

  it('reads packets split across reads and interleaved between connections, each at its own level', async () => {
    const pause = () => new Promise((r) => setTimeout(r, 40));
    const open = async (imsi: string, imei: string, level: 4 | 5) => {
      const got: Packet[] = [];
      const parser = mqttPacket.parser({ protocolVersion: level });
      parser.on('packet', (p: Packet) => got.push(p));
      const socket = createConnection({ host: '127.0.0.1', port: gateway.mqttPort });
      socket.setNoDelay(true);
      socket.on('data', (c: Buffer) => parser.parse(c));
      await new Promise((r) => socket.once('connect', r));
      socket.write(mqttPacket.generate({ ...(connectPacket(imsi) as mqttPacket.IConnectPacket), protocolVersion: level, clientId: imei, properties: level === 5 ? {} : undefined }, { protocolVersion: level }));
      await expect.poll(() => got.map((p) => p.cmd)).toEqual(['connack']);
      return { socket, got };
    };
    const a = await open('001010000000560', IMEI, 5);
    const b = await open('001010000000561', OTHER_IMEI, 4);
    // A's publish sets a topic alias (a property only an MQTT 5 reading finds); B's is plain 3.1.1.
    const pubA = mqttPacket.generate({ cmd: 'publish', topic: 'split', payload: Buffer.from('split-a'), qos: 1, messageId: 7, dup: false, retain: false, properties: { topicAlias: 1 } }, { protocolVersion: 5 });
    const pubB = mqttPacket.generate({ cmd: 'publish', topic: 'split', payload: Buffer.from('split-b'), qos: 1, messageId: 9, dup: false, retain: false }, { protocolVersion: 4 });
    const ping = mqttPacket.generate({ cmd: 'pingreq' });
    a.socket.write(pubA.subarray(0, 1)); // the fixed header's first byte only
    await pause();
    b.socket.write(pubB.subarray(0, 6));
    await pause();
    a.socket.write(pubA.subarray(1, 10));
    await pause();
    b.socket.write(Buffer.concat([pubB.subarray(6), ping]));
    await pause();
    a.socket.write(Buffer.concat([pubA.subarray(10), ping, ping.subarray(0, 1)]));
    await pause();
    a.socket.write(ping.subarray(1));
    // PINGRESP is immediate, PUBACK waits for the commit: compared without their order.
    await expect.poll(() => a.got.map((p) => p.cmd).sort()).toEqual(['connack', 'pingresp', 'pingresp', 'puback']);
    await expect.poll(() => b.got.map((p) => p.cmd).sort()).toEqual(['connack', 'pingresp', 'puback']);
    expect(a.got.find((p): p is mqttPacket.IPubackPacket => p.cmd === 'puback')?.messageId).toBe(7);
    expect(b.got.find((p): p is mqttPacket.IPubackPacket => p.cmd === 'puback')?.messageId).toBe(9);
    await seen('split-a');
    await seen('split-b');
    expect(upstreamTopicOf('split-a')).toBe('devices/sim-001010000000560/split');
    a.socket.destroy();
    b.socket.destroy();
  });

  it('ignores a PUBACK for an id it never sent and keeps serving the connection', async () => {
    const got = await rawSession(gateway.mqttPort, [
      connectPacket('001010000000510'),
      { cmd: 'puback', messageId: 4242 },
      { cmd: 'pingreq' },
      { cmd: 'disconnect', reasonCode: 0 },
    ]);
    expect(got.map((p) => p.cmd)).toEqual(['connack', 'pingresp']);
  });

  it('closes on malformed packets and on a second CONNECT, and keeps serving others', async () => {
    const garbage = await rawSession(gateway.mqttPort, [connectPacket('001010000000511'), Buffer.from([0x30, 0x05, 0xff, 0xff, 0x00, 0x00, 0x00])]);
    expect(garbage.map((p) => p.cmd)[0]).toBe('connack');
    const twice = await rawSession(gateway.mqttPort, [connectPacket('001010000000511'), connectPacket('001010000000511')]);
    expect(twice.map((p) => p.cmd)).toEqual(['connack', 'disconnect']);
    expect((twice[1] as mqttPacket.IDisconnectPacket).reasonCode).toBe(0x82);
    const ok = await mqtt.connectAsync(url, v5('001010000000511'));
    await ok.endAsync();
  });

  it('publishes the will of a killed MQTT 5 client upstream as that device, and not that of one that said DISCONNECT', async () => {
    const imsi = '001010000000512';
    const killed = await mqtt.connectAsync(url, v5(imsi, IMEI, { will: { topic: 'status', payload: Buffer.from('will-killed'), qos: 1, retain: false } }));
    const polite = await mqtt.connectAsync(url, v5('001010000000514', IMEI, { will: { topic: 'status', payload: Buffer.from('will-polite'), qos: 1, retain: false } }));
    await polite.endAsync();
    killed.stream.destroy();
    await seen('will-killed');
    expect(upstreamTopicOf('will-killed')).toBe(`devices/sim-${imsi}/status`);
    await new Promise((r) => setTimeout(r, 1000));
    expect(observer.messages.some((x) => x.payload.toString() === 'will-polite')).toBe(false);
    killed.end(true);
  });

  it('waits out a Will Delay Interval: no will when the device is back in time, the will once it is not', async () => {
    const imsi = '001010000000515';
    const opts = (payload: string) => v5(imsi, IMEI, { clean: false, properties: { sessionExpiryInterval: 60 }, will: { topic: 'status', payload: Buffer.from(payload), qos: 1, retain: false, properties: { willDelayInterval: 2 } } });
    const first = await mqtt.connectAsync(url, opts('will-delayed-back'));
    first.stream.destroy();
    await new Promise((r) => setTimeout(r, 500));
    const back = await mqtt.connectAsync(url, opts('will-delayed-gone'));
    await new Promise((r) => setTimeout(r, 2500));
    expect(observer.messages.some((x) => x.payload.toString() === 'will-delayed-back')).toBe(false);
    const killedAt = Date.now();
    back.stream.destroy();
    await seen('will-delayed-gone');
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(1500);
    first.end(true);
    back.end(true);
  }, 30_000);

  it('takes MQTT 5 subscription options: No Local, Retain As Published and Retain Handling accepted, QoS 2 granted as 1, delivery at the granted QoS', async () => {
    const imsi = '001010000000570';
    const device = await mqtt.connectAsync(url, v5(imsi));
    const granted = await device.subscribeAsync({
      'commands/low': { qos: 0, nl: true, rap: true, rh: 2 },
      'commands/high': { qos: 2, nl: false, rap: false, rh: 1 },
    });
    expect(granted.map((g) => [g.topic, g.qos])).toEqual([['commands/low', 0], ['commands/high', 1]]);
    const got: mqttPacket.IPublishPacket[] = [];
    device.on('packetreceive', (p: Packet) => p.cmd === 'publish' && got.push(p));
    await cloud.publishAsync(`devices/sim-${imsi}/commands/low`, 'to-qos0', { qos: 1 });
    await cloud.publishAsync(`devices/sim-${imsi}/commands/high`, 'to-qos1', { qos: 1 });
    await expect.poll(() => got.length, { timeout: 10_000 }).toBe(2);
    // MQTT-3.8.4-8: delivered at the lower of the message's QoS and the granted one; never retained.
    const byPayload = Object.fromEntries(got.map((p) => [p.payload.toString(), [p.qos, p.retain]]));
    expect(byPayload).toEqual({ 'to-qos0': [0, false], 'to-qos1': [1, false] });
    await device.endAsync();
  });

  it('passes IoT Core\'s retained message for a new subscription on with RETAIN 1, unless Retain Handling says not to', async () => {
    const publishes = (client: MqttClient) => {
      const got: mqttPacket.IPublishPacket[] = [];
      client.on('packetreceive', (p: Packet) => p.cmd === 'publish' && got.push(p));
      return got;
    };
    const retained = async (imsi: string, payload: string) => cloud.publishAsync(`devices/sim-${imsi}/commands/state`, payload, { qos: 1, retain: true });
    const summary = (got: mqttPacket.IPublishPacket[]) => got.map((p) => `${p.payload.toString()} retain=${p.retain}`);

    // Retain Handling 0 (MQTT 5) and a 3.1.1 device: the retained message, flagged.
    await retained('001010000000580', 'state-580');
    await retained('001010000000582', 'state-582');
    const v5device = await mqtt.connectAsync(url, v5('001010000000580'));
    const got5 = publishes(v5device);
    await v5device.subscribeAsync('commands/state', { qos: 1, rh: 0 });
    const v3device = await mqtt.connectAsync(url, deviceOptions('001010000000582', IMEI));
    const got3 = publishes(v3device);
    await v3device.subscribeAsync('commands/state', { qos: 1 });
    await expect.poll(() => summary(got5), { timeout: 10_000 }).toEqual(['state-580 retain=true']);
    await expect.poll(() => summary(got3), { timeout: 10_000 }).toEqual(['state-582 retain=true']);
    // Retain Handling 1 on a subscription the device already holds: not again.
    await v5device.subscribeAsync('commands/state', { qos: 1, rh: 1 });
    await new Promise((r) => setTimeout(r, 1500));
    expect(summary(got5)).toEqual(['state-580 retain=true']);

    // Retain Handling 2: no retained message, but what is published afterwards, with RETAIN 0.
    await retained('001010000000581', 'state-581');
    const quiet = await mqtt.connectAsync(url, v5('001010000000581'));
    const got2 = publishes(quiet);
    await quiet.subscribeAsync('commands/state', { qos: 1, rh: 2 });
    await new Promise((r) => setTimeout(r, 1500));
    expect(summary(got2)).toEqual([]);
    await cloud.publishAsync('devices/sim-001010000000581/commands/state', 'live-581', { qos: 1 });
    await expect.poll(() => summary(got2), { timeout: 10_000 }).toEqual(['live-581 retain=false']);
    for (const c of [v5device, v3device, quiet]) await c.endAsync();
  });

  it('refuses Retain Handling 3 in a SUBSCRIBE as a protocol error (0x82)', async () => {
    const filter = Buffer.from('commands/x');
    // SUBSCRIBE, packet id 1, no properties, one filter with options 0b0011_0001 (Retain Handling 3, QoS 1).
    const body = Buffer.concat([Buffer.from([0, 1, 0, 0, filter.length]), filter, Buffer.from([0x31])]);
    const subscribe = Buffer.concat([Buffer.from([0x82, body.length]), body]);
    const got = await rawSession(gateway.mqttPort, [connectPacket('001010000000571'), subscribe]);
    expect(got.map((p) => p.cmd)).toEqual(['connack', 'disconnect']);
    expect((got[1] as mqttPacket.IDisconnectPacket).reasonCode).toBe(0x82);
  });

  it('takes over the older connection of the same client id and tells it so (0x8E)', async () => {
    const imsi = '001010000000513';
    const old = await mqtt.connectAsync(url, v5(imsi));
    const told = nextPacket<mqttPacket.IDisconnectPacket>(old, 'disconnect');
    const fresh = await mqtt.connectAsync(url, v5(imsi));
    expect((await told).reasonCode).toBe(0x8e);
    await fresh.publishAsync('telemetry', 'after-takeover', { qos: 1 });
    await seen('after-takeover');
    old.end(true);
    await fresh.endAsync();
  });

  describe.each([
    ['MQTT 5 with session expiry', 5, { clean: false, properties: { sessionExpiryInterval: 3600 } }],
    ['3.1.1 with cleanSession=0', 4, { clean: false }],
  ] as const)('a persistent session (%s)', (_name, protocolVersion, sessionOpts) => {
    const imsi = protocolVersion === 5 ? '001010000000520' : '001010000000521';
    const opts = () => deviceOptions(imsi, IMEI, { protocolVersion, ...sessionOpts } as IClientOptions);
    const kept = async () =>
      (await withGatewayState(join(dir, 'gateway'), (db) => db.get<{ n: number }>('SELECT COUNT(*) AS n FROM mqtt_session_messages WHERE imsi = ?', imsi)))!.n;

    it('gets a command sent while it was away when it reconnects, exactly once', async () => {
      const first = await mqtt.connectAsync(url, opts());
      expect((await first.subscribeAsync('commands/#', { qos: 1 }))[0]!.qos).toBe(1);
      await first.endAsync();
      await new Promise((r) => setTimeout(r, 300));
      await cloud.publishAsync(`devices/sim-${imsi}/commands/wake`, 'while-away', { qos: 1 });
      const deadline = Date.now() + 10_000;
      while ((await kept()) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(await kept()).toBe(1);

      const received: string[] = [];
      const again = mqtt.connect(url, opts());
      again.on('message', (topic, payload) => received.push(`${topic} ${payload.toString()}`));
      const connack = await nextPacket<mqttPacket.IConnackPacket>(again, 'connack');
      expect(connack.sessionPresent).toBe(true);
      const until = Date.now() + 10_000;
      while (received.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      await new Promise((r) => setTimeout(r, 1000));
      expect(received).toEqual(['commands/wake while-away']);
      expect(await kept()).toBe(0);
      await again.endAsync();

      // Nothing is sent twice: a third connection hears nothing.
      const third = mqtt.connect(url, opts());
      const heard: string[] = [];
      third.on('message', (_t, payload) => heard.push(payload.toString()));
      await nextPacket(third, 'connack');
      await new Promise((r) => setTimeout(r, 1000));
      expect(heard).toEqual([]);
      // A clean start ends the session: no session present.
      await third.endAsync();
      const clean = mqtt.connect(url, deviceOptions(imsi, IMEI, { protocolVersion, clean: true }));
      expect((await nextPacket<mqttPacket.IConnackPacket>(clean, 'connack')).sessionPresent).toBe(false);
      await clean.endAsync();
    }, 60_000);
  });

  it('keeps at most mqttSessions.maxMessages commands for a sleeping device, the oldest dropped with an audit row', async () => {
    const imsi = '001010000000522';
    const opts = () => v5(imsi, IMEI, { clean: false, properties: { sessionExpiryInterval: 600 } });
    const first = await mqtt.connectAsync(url, opts());
    await first.subscribeAsync('commands/#', { qos: 1 });
    await first.endAsync();
    await new Promise((r) => setTimeout(r, 300));
    for (const n of [1, 2, 3]) await cloud.publishAsync(`devices/sim-${imsi}/commands/n`, `bounded-${n}`, { qos: 1 });
    const audited = async () =>
      (await withGatewayState(join(dir, 'gateway'), (db) => db.all<{ detail: string }>("SELECT detail FROM audit WHERE imsi = ? AND kind = 'downlink_dropped'", imsi))).map((r) => r.detail);
    const deadline = Date.now() + 10_000;
    while ((await audited()).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await audited()).toHaveLength(1);
    expect(JSON.parse((await audited())[0]!)).toMatchObject({ topic: 'commands/n', reason: 'more than 2 kept' });

    const received: string[] = [];
    const again = mqtt.connect(url, opts());
    again.on('message', (_t, payload) => received.push(payload.toString()));
    await nextPacket(again, 'connack');
    const until = Date.now() + 10_000;
    while (received.length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    expect(received).toEqual(['bounded-2', 'bounded-3']);
    await again.endAsync();
  }, 30_000);

  it('forgets a session once its expiry has passed: no session present, no subscription left', async () => {
    const imsi = '001010000000523';
    const first = await mqtt.connectAsync(url, v5(imsi, IMEI, { clean: false, properties: { sessionExpiryInterval: 1 } }));
    await first.subscribeAsync('commands/#', { qos: 1 });
    await first.endAsync();
    await new Promise((r) => setTimeout(r, 1500));
    const again = mqtt.connect(url, v5(imsi, IMEI, { clean: false, properties: { sessionExpiryInterval: 1 } }));
    expect((await nextPacket<mqttPacket.IConnackPacket>(again, 'connack')).sessionPresent).toBe(false);
    const heard: string[] = [];
    again.on('message', (_t, payload) => heard.push(payload.toString()));
    await cloud.publishAsync(`devices/sim-${imsi}/commands/x`, 'after-expiry', { qos: 1 });
    await new Promise((r) => setTimeout(r, 1000));
    expect(heard).toEqual([]);
    await again.endAsync();
  });

  it('takes up a stored session\'s subscriptions when the gateway starts again, before its device is back', async () => {
    const imsi = '001010000000524';
    const opts = () => v5(imsi, IMEI, { clean: false, properties: { sessionExpiryInterval: 3600 } });
    const first = await mqtt.connectAsync(url, opts());
    await first.subscribeAsync('commands/#', { qos: 1 });
    await first.endAsync();
    await gateway.kill();
    gateway = await startGatewayProcess(configFile);
    url = `mqtt://127.0.0.1:${gateway.mqttPort}`;
    const kept = async () =>
      (await withGatewayState(join(dir, 'gateway'), (db) => db.get<{ n: number }>('SELECT COUNT(*) AS n FROM mqtt_session_messages WHERE imsi = ?', imsi)))!.n;
    // The upstream subscription comes back in the background: the command is sent once it is in place.
    const deadline = Date.now() + 20_000;
    let n = 0;
    while ((await kept()) === 0 && Date.now() < deadline) {
      await cloud.publishAsync(`devices/sim-${imsi}/commands/after-restart`, `restart-${n++}`, { qos: 1 });
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(await kept()).toBeGreaterThan(0);
    const received: string[] = [];
    const again = mqtt.connect(url, opts());
    again.on('message', (_t, payload) => received.push(payload.toString()));
    expect((await nextPacket<mqttPacket.IConnackPacket>(again, 'connack')).sessionPresent).toBe(true);
    const until = Date.now() + 10_000;
    while (received.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    expect(received[0]).toMatch(/^restart-/);
    await again.endAsync();
  }, 60_000);

  describe.skipIf(!mosquittoPub || !mosquittoSub)('Mosquitto clients', () => {
    it.each(['mqttv5', 'mqttv311'])('carries a mosquitto_pub -V %s message upstream', async (version) => {
      const payload = `from-mosquitto_pub-${version}`;
      const { stderr } = await run(mosquittoPub!, ['-V', version, '-h', '127.0.0.1', '-p', String(gateway.mqttPort), '-u', '001010000000530', '-i', IMEI, '-q', '1', '-t', 'telemetry', '-m', payload]);
      expect(stderr).toBe('');
      await seen(payload);
    });

    it('shows mosquitto_pub -V mqttv5 the reason of a refused CONNECT', async () => {
      const result = await run(mosquittoPub!, ['-V', 'mqttv5', '-h', '127.0.0.1', '-p', String(gateway.mqttPort), '-u', '001010000000531', '-i', '490154203237517', '-q', '1', '-t', 't', '-m', 'x']).catch((err: { stderr: string; code: number }) => err);
      expect((result as { code?: number }).code).not.toBe(0);
      expect(result.stderr).toMatch(/client identifier not valid/i);
    });

    it.each(['mqttv5', 'mqttv311'])('delivers a command to mosquitto_sub -V %s', async (version) => {
      const imsi = version === 'mqttv5' ? '001010000000532' : '001010000000533';
      const sub = spawn(mosquittoSub!, ['-V', version, '-h', '127.0.0.1', '-p', String(gateway.mqttPort), '-u', imsi, '-i', IMEI, '-q', '1', '-t', 'commands/#', '-C', '1', '-v']);
      let out = '';
      sub.stdout.on('data', (c: Buffer) => (out += c.toString()));
      const exited = new Promise<number | null>((resolve) => sub.once('exit', resolve));
      // Sent until the subscription is in place upstream (the first ones may arrive before it).
      const sender = setInterval(() => void cloud.publishAsync(`devices/sim-${imsi}/commands/ping`, `cmd-${version}`, { qos: 1 }), 300);
      const code = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000))]);
      clearInterval(sender);
      if (code === 'timeout') sub.kill();
      expect(code).toBe(0);
      expect(out.trim()).toBe(`commands/ping cmd-${version}`);
    }, 30_000);
  });
});

describe('MQTT 5 user properties in the batch envelope; a flood of CONNECTs', () => {
  const dir = tempDir('mqtt5-props');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      listeners: { mqtt: { maxConnectsPerAddressPerSecond: 2 } },
      groups: { default: { lock: 'any', batching: { policy: 'window', maxMessages: 3, maxDelayMs: 1000 } } },
    });
    gateway = await startGatewayProcess(cfg.file);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('keeps each reading\'s user properties, and the decoder returns them', async () => {
    const imsi = '001010000000540';
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, v5(imsi));
    await device.publishAsync('meter', '{"kwh":1}', { qos: 1, properties: { userProperties: { unit: 'kWh', tag: ['a', 'b'] } } });
    await device.publishAsync('raw', Buffer.from([0, 1, 255]), { qos: 1, properties: { userProperties: { unit: 'bytes' } } });
    await device.publishAsync('meter', '{"kwh":2}', { qos: 1 });
    await device.endAsync();
    await observer.waitUntil((m) => m.some((x) => x.topic === `devices/sim-${imsi}/batch`));
    const { decodeBatch } = await import('../docs/examples/decode-batch.mjs');
    const readings = decodeBatch(observer.messages.find((x) => x.topic === `devices/sim-${imsi}/batch`)!.payload);
    expect(readings.map((r) => [r.topic, r.userProperties])).toEqual([
      ['meter', { unit: 'kWh', tag: ['a', 'b'] }],
      ['raw', { unit: 'bytes' }],
      ['meter', undefined],
    ]);
    expect(readings[1]!.payload).toEqual(Buffer.from([0, 1, 255]));
  });

  it('answers a flood of CONNECTs from one address with 0x9F (MQTT 5) and 3 (3.1.1) past the rate, and takes the address again after a pause', async () => {
    await new Promise((r) => setTimeout(r, 2500)); // the bucket is full again
    const url = `mqtt://127.0.0.1:${gateway.mqttPort}`;
    // One burst of both levels: the rate is checked as each connection is accepted, before its CONNECT is
    // read, so a 3.1.1 connect sent after the MQTT 5 ones were answered could find a token refilled while
    // their first contacts were admitted (slower on a database over the network).
    const levels = [...Array.from({ length: 10 }, () => 5), ...Array.from({ length: 6 }, () => 4)];
    const codes = await Promise.all(
      levels.map((level, i) => connectDevice(url, level === 5 ? v5(`00101000000055${i}`) : deviceOptions(`00101000000059${i - 10}`, IMEI)).then((c) => ({ ...c, level }))),
    );
    codes.forEach((c) => c.client.end(true));
    const accepted = codes.filter((c) => c.code === 0).length;
    expect(accepted).toBeGreaterThanOrEqual(1);
    expect(accepted).toBeLessThanOrEqual(5); // a burst of 4, and what refills meanwhile
    const refused = codes.filter((c) => c.code !== 0);
    expect(refused.filter((c) => c.level === 5).every((c) => c.code === 0x9f)).toBe(true);
    // At most 5 of 16 accepted: at least one of the six 3.1.1 devices is refused, with return code 3.
    expect(refused.filter((c) => c.level === 4).map((c) => c.code)).toEqual(expect.arrayContaining([3]));
    expect(refused.filter((c) => c.level === 4).every((c) => c.code === 3)).toBe(true);
    await new Promise((r) => setTimeout(r, 1500));
    const again = await connectDevice(url, v5('001010000000541'));
    expect(again.code).toBe(0);
    again.client.end(true);
  });
});
