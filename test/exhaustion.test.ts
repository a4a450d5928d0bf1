import { join } from 'node:path';
import net from 'node:net';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { scrapeMetrics } from './helpers/http.ts';
import { withGatewayState } from './helpers/storage-mode.ts';
import { closed, connectFrom, deviceOptions, Observer } from './helpers/mqtt.ts';

// No device may use up the gateway: retained publishes, connections per address and per SIM, keepalive,
// and HTTP requests that never finish arriving. Limits are set low here so the test runs in seconds.
const IMEI = '490154203237518';
const LIMITS = { perAddress: 4, perSim: 2, keepAliveS: 2, headersMs: 1500, requestMs: 3000, idleMs: 1200 };

/** A raw TCP exchange: writes `chunks` `gapMs` apart; resolves with what came back and when the gateway closed. */
function trickle(port: number, localAddress: string, chunks: string[], gapMs: number, giveUpMs: number): Promise<{ reply: string; closedAfterMs: number | null }> {
  return new Promise((resolve) => {
    const started = Date.now();
    let reply = '';
    let stop = false;
    const s = net.createConnection({ host: '127.0.0.1', port, localAddress });
    const giveUp = setTimeout(() => (stop = true, s.destroy(), resolve({ reply, closedAfterMs: null })), giveUpMs);
    s.on('data', (d) => (reply += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      stop = true;
      clearTimeout(giveUp);
      resolve({ reply, closedAfterMs: Date.now() - started });
    });
    s.once('connect', async () => {
      for (const c of chunks) {
        if (stop || s.destroyed) return;
        s.write(c);
        await new Promise((r) => setTimeout(r, gapMs));
      }
    });
  });
}

describe('a device cannot exhaust the gateway', () => {
  const dir = tempDir('exhaust');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;
  const open: MqttClient[] = [];

  const metric = async (reason: string, protocol: string) => {
    const text = await scrapeMetrics(gateway.adminPort);
    const m = text.match(new RegExp(`simbridge_refusals_total\\{protocol="${protocol}",reason="${reason}"\\} (\\d+)`));
    return m ? Number(m[1]) : 0;
  };
  const audit = async (imsi: string, kind: string) =>
    (await withGatewayState(join(dir, 'gateway'), (db) => db.get<{ n: number }>('SELECT count(*) AS n FROM audit WHERE imsi = ? AND kind = ?', imsi, kind)))!.n;
  const connect = async (from: string, imsi: string, clientId: string, extra = {}) => {
    const r = await connectFrom(from, gateway.mqttPort, deviceOptions(imsi, clientId, extra));
    if (r.code === 0) open.push(r.client);
    return r;
  };

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const config = await gatewayConfig(dir, sandbox, {
      listeners: {
        mqtt: { maxConnectionsPerAddress: LIMITS.perAddress, maxConnectionsPerSim: LIMITS.perSim, maxKeepAliveSeconds: LIMITS.keepAliveS },
        http: { maxConnectionsPerAddress: LIMITS.perAddress, headersTimeoutMs: LIMITS.headersMs, requestTimeoutMs: LIMITS.requestMs, idleTimeoutMs: LIMITS.idleMs },
      },
    });
    gateway = await startGatewayProcess(config.file);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
  });

  afterAll(async () => {
    for (const c of open) c.end(true);
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('refuses a retained publish (closing the connection, as for QoS 2), counts and audits it, and passes nothing upstream', async () => {
    const imsi = '001010000000901';
    const { code, client } = await connect('127.0.1.1', imsi, IMEI);
    expect(code).toBe(0);
    await client.publishAsync('plain', 'kept-moving', { qos: 1 });
    const wasClosed = closed(client);
    let acked = false;
    client.publish('state', Buffer.alloc(100_000, 0x41), { qos: 1, retain: true }, (err) => (acked = !err));
    await wasClosed;
    expect(acked).toBe(false);
    await observer.waitUntil((ms) => ms.some((m) => m.topic === `devices/sim-${imsi}/plain`));
    await new Promise((r) => setTimeout(r, 500));
    expect(observer.messages.filter((m) => m.topic === `devices/sim-${imsi}/state`)).toHaveLength(0);
    expect(await metric('retain_not_supported', 'mqtt')).toBe(1);
    expect(await audit(imsi, 'retain_not_supported')).toBe(1);
  });

  it(`answers CONNACK 3 past ${LIMITS.perAddress} connections from one address, and takes the next once one closes`, async () => {
    const from = '127.0.1.2';
    const clients: MqttClient[] = [];
    for (let i = 0; i < LIMITS.perAddress; i++) {
      const r = await connect(from, `00101000000091${i}`, IMEI);
      expect(r.code).toBe(0);
      clients.push(r.client);
    }
    expect((await connectFrom(from, gateway.mqttPort, deviceOptions('001010000000919', IMEI))).code).toBe(3);
    // Another address is not affected.
    expect((await connect('127.0.1.3', '001010000000919', IMEI)).code).toBe(0);
    clients[0]!.end(true);
    await new Promise((r) => setTimeout(r, 200));
    expect((await connect(from, '001010000000918', IMEI)).code).toBe(0);
    expect(await metric('address_connection_limit', 'mqtt')).toBe(1);
  });

  it(`answers CONNACK 3 past ${LIMITS.perSim} connections of one SIM (IMEISV variants), audited; a reconnect with the same client id still takes over`, async () => {
    const imsi = '001010000000920';
    const ids = ['4901542032375101', '4901542032375102', '4901542032375103'];
    expect((await connect('127.0.2.1', imsi, ids[0]!)).code).toBe(0);
    expect((await connect('127.0.2.2', imsi, ids[1]!)).code).toBe(0);
    expect((await connect('127.0.2.3', imsi, ids[2]!)).code).toBe(3);
    expect((await connect('127.0.2.4', imsi, ids[0]!)).code).toBe(0);
    expect(await metric('sim_connection_limit', 'mqtt')).toBe(1);
    expect(await audit(imsi, 'sim_connection_limit')).toBe(1);
  });

  it.each([
    ['keepalive 0', 0],
    ['a keepalive over the maximum', 3600],
  ])('closes a silent connection with %s after 1.5 x the maximum keepalive', async (_name, keepalive) => {
    const { code, client } = await connect('127.0.3.1', '001010000000930', IMEI, { keepalive });
    expect(code).toBe(0);
    const started = Date.now();
    // keepalive 0 makes mqtt.js send no PINGREQ; with 3600 it would wait an hour: the device is silent either way.
    await closed(client, LIMITS.keepAliveS * 1500 + 3000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(LIMITS.keepAliveS * 1000);
  });

  const post = (contentLength: number) =>
    `POST /topics/slow?qos=1 HTTP/1.1\r\nHost: x\r\nX-IMSI: 001010000000940\r\nX-IMEI: ${IMEI}\r\nContent-Length: ${contentLength}\r\n\r\n`;

  it('answers 408 to a body trickled one byte at a time, once the request timeout has passed', async () => {
    const r = await trickle(gateway.httpPort, '127.0.4.1', [post(100), ...Array.from({ length: 100 }, () => 'x')], 300, LIMITS.requestMs + 5000);
    expect(r.closedAfterMs).not.toBeNull();
    expect(r.closedAfterMs!).toBeGreaterThanOrEqual(LIMITS.requestMs - 200);
    expect(r.reply).toMatch(/^HTTP\/1\.1 408 /);
    expect(JSON.parse(r.reply.slice(r.reply.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: 'request_timeout' });
  });

  it('answers 408 to a body that stalls', async () => {
    const r = await trickle(gateway.httpPort, '127.0.4.2', [post(100) + 'half'], 10, LIMITS.requestMs + 5000);
    expect(r.closedAfterMs).not.toBeNull();
    expect(r.closedAfterMs!).toBeLessThan(LIMITS.requestMs);
    expect(r.reply).toMatch(/^HTTP\/1\.1 408 /);
  });

  it('closes a request whose headers trickle', async () => {
    const headers = post(1).split('\r\n').map((l) => l + '\r\n');
    const r = await trickle(gateway.httpPort, '127.0.4.3', [...headers.slice(0, 3), ...Array.from({ length: 50 }, (_, i) => `X-Pad-${i}: y\r\n`)], 200, LIMITS.requestMs + 5000);
    expect(r.closedAfterMs).not.toBeNull();
    expect(r.closedAfterMs!).toBeLessThan(LIMITS.requestMs + 1500);
    expect(r.reply).toMatch(/^HTTP\/1\.1 408 /);
    expect(await metric('request_timeout', 'http')).toBeGreaterThanOrEqual(3);
  });

  it(`answers 503 past ${LIMITS.perAddress} HTTP connections from one address`, async () => {
    const from = '127.0.4.4';
    const idle = await Promise.all(
      Array.from({ length: LIMITS.perAddress }, () => new Promise<net.Socket>((resolve) => {
        const s = net.createConnection({ host: '127.0.0.1', port: gateway.httpPort, localAddress: from }, () => resolve(s));
      })),
    );
    try {
      const r = await trickle(gateway.httpPort, from, ['GET /v1/self HTTP/1.1\r\nHost: x\r\n\r\n'], 10, 3000);
      expect(r.reply).toMatch(/^HTTP\/1\.1 503 /);
      expect(r.reply).toMatch(/address_connection_limit/);
      expect(await metric('address_connection_limit', 'http')).toBe(1);
    } finally {
      for (const s of idle) s.destroy();
    }
  });
});
