// The upstream link on the main event loop (bridge/upstream/tls-link.ts) against a real Mosquitto with
// mutual TLS: what the session pool relies on, one behaviour at a time.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { filterMatches, tlsLink } from '../bridge/upstream/tls-link.ts';
import { connectionThreads, type ConnectSettings, type UpstreamLink } from '../bridge/upstream/connections.ts';
import { CertificateAuthority } from '../sandbox/ca.ts';
import { generateKeyAndCsr } from '../vending/keys.ts';
import { findPeer } from './helpers/interop.ts';
import { startMosquitto, type MosquittoBroker } from './helpers/mosquitto.ts';
import { Observer } from './helpers/mqtt.ts';
import { tempDir } from './helpers/processes.ts';
import { startTcpProxy } from './helpers/tcp-proxy.ts';

const mosquitto = findPeer('mosquitto', 'mosquitto');

describe('MQTT topic filters as the upstream link matches them', () => {
  it('follows MQTT 3.1.1 section 4.7', () => {
    expect(filterMatches('a/b', 'a/b')).toBe(true);
    expect(filterMatches('a/+', 'a/b')).toBe(true);
    expect(filterMatches('a/+', 'a/b/c')).toBe(false);
    expect(filterMatches('a/#', 'a')).toBe(true);
    expect(filterMatches('a/#', 'a/b/c')).toBe(true);
    expect(filterMatches('+/b', 'a/b')).toBe(true);
    expect(filterMatches('a/b', 'a/c')).toBe(false);
    expect(filterMatches('#', '$aws/things/t/shadow/update/accepted')).toBe(false);
    expect(filterMatches('+/things/t/shadow/update/accepted', '$aws/things/t/shadow/update/accepted')).toBe(false);
    expect(filterMatches('$aws/things/+/shadow/#', '$aws/things/t/shadow/update/accepted')).toBe(true);
  });
});

describe.skipIf(!mosquitto)('the upstream link on the main event loop, against a real Mosquitto with mutual TLS', () => {
  const dir = tempDir('tls-link');
  let broker: MosquittoBroker;
  let ca: CertificateAuthority;
  let observer: Observer;
  let link: UpstreamLink;

  async function settings(clientId: string, over: Partial<ConnectSettings> = {}, signer = ca): Promise<ConnectSettings> {
    const { privateKeyPem, csrPem } = await generateKeyAndCsr(clientId, 'ec-p256');
    const cert = await signer.signCsr(csrPem, 1);
    return {
      endpoint: 'localhost',
      port: broker.tlsPort,
      clientId,
      certificatePem: cert.pem,
      privateKeyPem,
      caPem: ca.certPem,
      keepAliveSeconds: 30,
      connectTimeoutMs: 3000,
      operationTimeoutMs: 3000,
      ...over,
    };
  }
  const quiet = { interrupted: () => undefined, error: () => undefined };

  beforeAll(async () => {
    ca = await CertificateAuthority.open(dir);
    const server = await ca.serverIdentity(dir, ['localhost'], ['127.0.0.1']);
    broker = await startMosquitto(mosquitto!, dir, { caFile: ca.certFile, certFile: server.certFile, keyFile: server.keyFile });
    observer = await Observer.connect(`mqtt://127.0.0.1:${broker.plainPort}`, 'link/#');
    link = tlsLink();
  });

  afterAll(async () => {
    await link?.close();
    await observer?.close();
    await broker?.stop();
  });

  it('publishes at QoS 1 (resolved on PUBACK) and QoS 0, bytes exact, as the certificate it holds', async () => {
    const conn = await link.connect(await settings('thing-pub'), quiet);
    const payload = randomBytes(3000);
    await conn.publish('link/pub/1', payload, 1);
    await conn.publish('link/pub/0', Buffer.from('zero'), 0);
    await observer.waitUntil((m) => m.some((x) => x.topic === 'link/pub/0'));
    expect(observer.messages.find((x) => x.topic === 'link/pub/1')!.payload.equals(payload)).toBe(true);
    await conn.disconnect();
  });

  it('subscribes, receives retained and live messages on the first matching filter, and stops after unsubscribing', async () => {
    const cloud = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.plainPort}`);
    await cloud.publishAsync('link/cmd/retained', 'kept', { qos: 1, retain: true });
    const conn = await link.connect(await settings('thing-sub'), quiet);
    const got: string[] = [];
    expect(await conn.subscribe('link/cmd/#', 1, (topic, payload, qos, retain) => got.push(`# ${topic} ${payload.toString()} q${qos} r${retain}`))).toBe(1);
    expect(await conn.subscribe('link/cmd/+', 0, (topic, payload) => got.push(`+ ${topic} ${payload.toString()}`))).toBe(0);
    await cloud.publishAsync('link/cmd/live', 'now', { qos: 1 });
    await expect.poll(() => got.filter((g) => g.includes('now')).length).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 200));
    // Each copy the broker sends (Mosquitto: one per client, at the QoS of one of the matching
    // subscriptions) reaches one handler, the first matching filter's, as it did through the SDK.
    expect(got.filter((g) => g.startsWith('+'))).toEqual([]);
    expect(got.filter((g) => g.includes('now'))).toEqual([expect.stringMatching(/^# link\/cmd\/live now q[01] rfalse$/)]);
    expect(got[0]).toBe('# link/cmd/retained kept q1 rtrue');
    await conn.unsubscribe('link/cmd/#');
    await conn.unsubscribe('link/cmd/+');
    const before = got.length;
    await cloud.publishAsync('link/cmd/live', 'later', { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    expect(got.length).toBe(before);
    await cloud.publishAsync('link/cmd/retained', '', { qos: 1, retain: true });
    await cloud.endAsync();
    await conn.disconnect();
  });

  it('rejects a connect with a certificate the broker does not trust, and one that gets no answer in time', async () => {
    const stranger = await CertificateAuthority.open(tempDir('tls-link-stranger'));
    await expect(link.connect(await settings('thing-stranger', {}, stranger), quiet)).rejects.toThrow();
    const relay = await startTcpProxy(broker.tlsPort);
    relay.silence();
    await expect(link.connect(await settings('thing-mute', { port: relay.port, connectTimeoutMs: 500 }), quiet)).rejects.toThrow(/no CONNACK within 500 ms/);
    await relay.close();
  });

  it("refuses an upstream whose certificate does not chain to the session's CA bundle, on the main loop and on a thread", async () => {
    const stranger = await CertificateAuthority.open(tempDir('tls-link-other-ca'));
    await expect(link.connect(await settings('thing-pinned', { caPem: stranger.certPem }), quiet)).rejects.toThrow(/certificate/);
    // A thread's default trust follows the bundle each connect brings (see threadDefaultTrust).
    const threaded = connectionThreads(1, 'node');
    try {
      await threaded.ready();
      const trusted = await threaded.connect(await settings('thing-pinned-1'), quiet);
      await expect(threaded.connect(await settings('thing-pinned-2', { caPem: stranger.certPem }), quiet)).rejects.toThrow(/certificate/);
      const again = await threaded.connect(await settings('thing-pinned-3'), quiet);
      await again.publish('link/pinned', Buffer.from('x'), 1);
      await Promise.all([trusted.disconnect(), again.disconnect()]);
    } finally {
      await threaded.close();
    }
  });

  it('reports a connection the broker closes (a second connection with the same client id), failing what was in flight', async () => {
    const why: string[] = [];
    const first = await link.connect(await settings('thing-twice'), { interrupted: (e) => why.push(e), error: () => undefined });
    const second = await link.connect(await settings('thing-twice'), quiet);
    await expect.poll(() => why.length).toBe(1);
    expect(why[0]).toMatch(/closed/);
    await expect(first.publish('link/late', Buffer.from('x'), 1)).rejects.toThrow(/session closed/);
    await second.disconnect();
  });

  it('times out an unanswered publish, then finds the silent connection dead by its keepalive ping', async () => {
    const relay = await startTcpProxy(broker.tlsPort);
    const why: string[] = [];
    // Mosquitto closes a link silent for 1.5 keepalives (3 s): the ping and its timeout come well before.
    const conn = await link.connect(await settings('thing-silent', { port: relay.port, keepAliveSeconds: 2, operationTimeoutMs: 1000 }), {
      interrupted: (e) => why.push(e),
      error: () => undefined,
    });
    relay.silence();
    await expect(conn.publish('link/unanswered', Buffer.from('x'), 1)).rejects.toThrow(/no answer from the upstream within 1000 ms/);
    await expect.poll(() => why, { timeout: 6000 }).toEqual(['no PINGRESP within 1000 ms']);
    await relay.close();
  });

  it('keeps an idle connection alive past 1.5 keepalives with its pings', async () => {
    const why: string[] = [];
    const conn = await link.connect(await settings('thing-idle', { keepAliveSeconds: 2 }), { interrupted: (e) => why.push(e), error: () => undefined });
    await new Promise((r) => setTimeout(r, 6500));
    expect(why).toEqual([]);
    await conn.publish('link/idle', Buffer.from('still here'), 1);
    await conn.disconnect();
  });

  it('does the same on a connection thread of its own (upstream.threads ≥ 1)', async () => {
    const threaded = connectionThreads(1, 'node');
    try {
      await threaded.ready();
      const conn = await threaded.connect(await settings('thing-threaded'), quiet);
      const got: string[] = [];
      expect(await conn.subscribe('link/threaded/cmd', 1, (topic, payload, qos) => got.push(`${topic} ${payload.toString()} q${qos}`))).toBe(1);
      const payload = randomBytes(512);
      await conn.publish('link/threaded/up', payload, 1);
      await observer.waitUntil((m) => m.some((x) => x.topic === 'link/threaded/up'));
      expect(observer.messages.find((x) => x.topic === 'link/threaded/up')!.payload.equals(payload)).toBe(true);
      const cloud = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.plainPort}`);
      await cloud.publishAsync('link/threaded/cmd', 'go', { qos: 1 });
      await cloud.endAsync();
      await expect.poll(() => got).toEqual(['link/threaded/cmd go q1']);
      await conn.disconnect();
    } finally {
      await threaded.close();
    }
  });
});
