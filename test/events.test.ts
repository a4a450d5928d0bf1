import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AttachPolicyCommand, CreatePolicyCommand } from '@aws-sdk/client-iot';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { maskId } from '../lib/ids.ts';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { KeyCipher } from '../vending/key-cipher.ts';
import { runCli } from './helpers/cli.ts';
import { findPeer } from './helpers/interop.ts';
import { Observer, type Received } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, TEST_MASTER_KEY, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { scrapeMetrics } from './helpers/http.ts';
import { gatewayState, withGatewayState } from './helpers/storage-mode.ts';
import { startTcpProxy } from './helpers/tcp-proxy.ts';

// Lifecycle events (docs/events.md): each occurrence is driven for real (devices over HTTP, radclient as
// the PGW, the admin API, IoT Core refusing a topic, a full outbox) and its event is watched arriving
// at the sandbox's observer, published by the gateway as its own thing.
const radclient = findPeer('radclient', 'freeradius-utils');
const SECRET = 'pgw-secret';
const GATEWAY = 'edge-test';
const IMEI = '490154203237518';
const OTHER_IMEI = '353456789012348';

interface Event {
  version: number;
  kind: string;
  gateway: string;
  eventId: string;
  at: string;
  sim: { imsi: string };
  [k: string]: unknown;
}

const eventsOf = (msgs: Received[], kind?: string): Event[] =>
  msgs
    .filter((m) => m.topic.startsWith(`simbridge/${GATEWAY}/events/`))
    .map((m) => ({ topic: m.topic, ev: JSON.parse(m.payload.toString()) as Event }))
    .filter(({ topic, ev }) => (kind === undefined || ev.kind === kind) && topic === `simbridge/${GATEWAY}/events/${ev.kind}`)
    .map(({ ev }) => ev);

async function post(port: number, imsi: string, topic: string, body: string, imei = IMEI): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/topics/${topic}?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': imei }, body });
  await res.arrayBuffer();
  return res.status;
}

/** Adds the events section (and any other top-level keys) to a gateway config written by gatewayConfig. */
function withEvents(file: string, extra: Record<string, unknown> = {}): void {
  const config = parse(readFileSync(file, 'utf8'));
  writeFileSync(file, stringify({ ...config, events: { enabled: true, gateway: GATEWAY }, ...extra }));
}

const gatewayRows = async (dir: string, topicLike = '%'): Promise<number> =>
  (await withGatewayState(join(dir, 'gateway'), (db) => db.get<{ n: number }>("SELECT COUNT(*) AS n FROM outbox WHERE imsi = '@gateway' AND device_topic LIKE ?", topicLike)))!.n;

describe.skipIf(!radclient)('lifecycle events, one per occurrence', () => {
  const dir = tempDir('events');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;
  let token: string;

  const admin = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`http://127.0.0.1:${gateway.adminPort}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, body: (await res.json()) as any };
  };

  function accounting(lines: string[]): Promise<number | null> {
    return new Promise((resolve, reject) => {
      const child = spawn(radclient!, ['-x', '-r', '2', '-t', '2', `127.0.0.1:${gateway.radiusPort}`, 'acct', SECRET], { stdio: ['pipe', 'ignore', 'ignore'] });
      child.on('error', reject);
      child.on('close', resolve);
      child.stdin.end(lines.join('\n') + '\n');
    });
  }

  const record = (status: string, imsi: string) => [
    `Acct-Status-Type = ${status}`,
    'Framed-IP-Address = 127.0.0.9',
    'Acct-Session-Id = "acct-events-1"',
    'NAS-IP-Address = 127.0.0.1',
    'Calling-Station-Id = "447900009"',
    `3GPP-IMSI = "${imsi}"`,
    `3GPP-IMEISV = "4901542032375101"`,
    '3GPP-RAT-Type = 8',
  ];

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      radius: { enabled: true, clients: [{ address: '127.0.0.1', secret: SECRET }] },
      storage: { outbox: { perDeviceMaxRows: 3 } },
      upstream: { maxDeliveryAttempts: 2, minConnectIntervalMs: 100, propagationGraceMs: 0 },
      groups: {
        default: { lock: 'first-contact', bindClaimedImei: true },
        // Readings wait in an open batch: a full queue drops the oldest (audited) without IoT Core's help.
        lossy: { overflow: 'drop-oldest', batching: { policy: 'window', maxMessages: 100, maxDelayMs: 600_000 } },
      },
    });
    withEvents(cfg.file);
    const created = await runCli(['tokens', 'create', '--role', 'operator', '--name', 'ops@test', '--config', cfg.file]);
    expect(created.code).toBe(0);
    token = created.output.match(/sbt_\S+/)![0];
    gateway = await startGatewayProcess(cfg.file);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`, '#');
  }, 120_000);

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('publishes every kind once per occurrence, as the gateway, with identifiers masked', async () => {
    const a = '001010000000701'; // first contact, then a wrong IMEI, then suspended
    const b = '001010000000702'; // terminated (its certificate revoked)
    const c = '001010000000703'; // a network session starts and stops
    const d = '001010000000704'; // a message IoT Core keeps refusing
    const e = '001010000000705'; // a full outbox drops its oldest

    // First contact and the first certificate.
    expect(await post(gateway.httpPort, a, 'ok/1', 'a1')).toBe(202);
    expect(await post(gateway.httpPort, b, 'ok/1', 'b1')).toBe(202);
    expect(await post(gateway.httpPort, d, 'ok/1', 'd1')).toBe(202);
    await observer.waitUntil((m) => ['a1', 'b1', 'd1'].every((p) => m.some((x) => x.payload.toString() === p)), 60_000);

    // The IMEI lock bound A's first IMEI: another one is refused.
    expect(await post(gateway.httpPort, a, 'ok/2', 'a2', OTHER_IMEI)).toBe(403);

    // Suspension and termination through the admin API.
    expect((await admin('PATCH', `/v1/sims/${a}`, { status: 'suspended' })).status).toBe(200);
    expect((await admin('PATCH', `/v1/sims/${b}`, { status: 'terminated' })).status).toBe(200);

    // RADIUS Start and Stop from the PGW.
    expect(await accounting(record('Start', c))).toBe(0);
    expect(await accounting(record('Stop', c))).toBe(0);

    // A topic an operator's own policy denies: refused twice, then dead-lettered.
    const iot = sandboxIotClient(sandbox.controlEndpoint);
    const deny = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Action: 'iot:Publish', Resource: 'arn:aws:iot:us-east-1:123456789012:topic/devices/*/denied/*' }] });
    await iot.send(new CreatePolicyCommand({ policyName: 'operator-deny-events', policyDocument: deny }));
    const st = (await (await fetch(`${sandbox.controlEndpoint}/_sandbox/state`)).json()) as { certificates: Array<{ certificateArn: string; things: string[] }> };
    await iot.send(new AttachPolicyCommand({ policyName: 'operator-deny-events', target: st.certificates.find((x) => x.things.includes(`sim-${d}`))!.certificateArn }));
    iot.destroy();
    expect(await post(gateway.httpPort, d, 'denied/1', 'refused-for-good')).toBe(202);

    // A device of the lossy group: 5 readings into a queue of 3 drop the 2 oldest.
    expect((await admin('POST', '/v1/sims', { imsi: e, group: 'lossy' })).status).toBe(201);
    for (let i = 0; i < 5; i++) expect(await post(gateway.httpPort, e, 'm', `e${i}`)).toBe(202);

    const expected: Record<string, string[]> = {
      // e was registered by the operator, not at its first contact.
      first_contact: [a, b, d],
      certificate_vended: [a, b, d],
      imei_mismatch: [a],
      sim_suspended: [a],
      sim_terminated: [b],
      certificate_revoked: [b],
      network_session_start: [c],
      network_session_stop: [c],
      message_dead_lettered: [d],
      message_dropped_quota: [e, e],
    };
    await observer.waitUntil((m) => Object.entries(expected).every(([kind, sims]) => eventsOf(m, kind).length >= sims.length), 60_000);
    // Anything published twice would have arrived by now.
    await new Promise((r) => setTimeout(r, 1500));

    for (const [kind, sims] of Object.entries(expected)) {
      const got = eventsOf(observer.messages, kind);
      expect([kind, got.map((ev) => ev.sim.imsi).sort()]).toEqual([kind, sims.map((s) => maskId(s)).sort()]);
      for (const ev of got) expect(ev).toMatchObject({ version: 1, kind, gateway: GATEWAY });
      for (const ev of got) expect(Number.isNaN(Date.parse(ev.at))).toBe(false);
    }
    const all = eventsOf(observer.messages);
    expect(new Set(all.map((ev) => ev.eventId)).size).toBe(all.length);
    // Nothing leaves unmasked: no IMSI or IMEI in clear anywhere in any event.
    const text = all.map((ev) => JSON.stringify(ev)).join('\n');
    for (const id of [a, b, c, d, e, IMEI, OTHER_IMEI]) expect(text).not.toContain(id);
    expect(eventsOf(observer.messages, 'imei_mismatch')[0]).toMatchObject({ boundImei: maskId(IMEI), seenImei: maskId(OTHER_IMEI) });
    expect(eventsOf(observer.messages, 'message_dropped_quota').map((ev) => ev.topic)).toEqual(['m', 'm']);
    expect(eventsOf(observer.messages, 'network_session_stop')[0]).toMatchObject({ cause: 'stop', session: { ip: '127.0.0.9', acctSessionId: 'acct-events-1' } });
    // Delivered events leave the outbox.
    expect(await gatewayRows(dir)).toBe(0);
    const metrics = await scrapeMetrics(gateway.adminPort);
    expect(metrics).toMatch(/simbridge_events_published_total\{kind="message_dropped_quota"\} 2/);
    expect(metrics).toMatch(/simbridge_events_published_total\{kind="imei_mismatch"\} 1/);
    expect(metrics).toMatch(/simbridge_events_queued 0/);
  }, 180_000);

  it('publishes as its own thing, whose policy allows only its event topics', async () => {
    const st = (await (await fetch(`${sandbox.controlEndpoint}/_sandbox/state`)).json()) as { certificates: Array<{ things: string[]; policies?: string[] }> };
    expect(st.certificates.filter((c) => c.things.includes(`simbridge-${GATEWAY}`))).toHaveLength(1);
    const row = (await withGatewayState(join(dir, 'gateway'), (db) =>
      db.get<{ step: string; key_enc: Buffer; thing_name: string }>('SELECT step, key_enc, thing_name FROM gateway_credentials WHERE gateway = ?', GATEWAY),
    ))!;
    expect(row).toMatchObject({ step: 'ready', thing_name: `simbridge-${GATEWAY}` });
    // The private key is sealed (AES-256-GCM), never stored as PEM.
    expect(row.key_enc.toString('latin1')).not.toContain('PRIVATE KEY');
  });

  it("the gateway's certificate may publish its events and nothing else (the sandbox holds it to its policy)", async () => {
    const row = (await withGatewayState(join(dir, 'gateway'), (db) => db.get<{ cert_pem: string; key_enc: Buffer }>('SELECT cert_pem, key_enc FROM gateway_credentials WHERE gateway = ?', GATEWAY)))!;
    const key = new KeyCipher(Buffer.from(TEST_MASTER_KEY, 'hex')).decrypt(row.key_enc, `gateway:${GATEWAY}`).toString();
    const connect = (clientId: string) =>
      mqtt.connectAsync(`mqtts://localhost:${sandbox.dataPort}`, { ca: readFileSync(sandbox.caFile), cert: row.cert_pem, key, clientId, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5_000 }, false);
    // Another client id than its thing: refused.
    await expect(connect('sim-001010000000701')).rejects.toBeDefined();
    const own = await connect(`simbridge-${GATEWAY}`);
    await own.publishAsync(`simbridge/${GATEWAY}/events/probe`, 'ok', { qos: 1 });
    await observer.waitUntil((m) => m.some((x) => x.topic === `simbridge/${GATEWAY}/events/probe`));
    // A device's topic: IoT Core closes the connection and forwards nothing.
    const closed = new Promise<void>((resolve) => own.once('close', () => resolve()));
    own.publish('devices/sim-001010000000701/forged', 'no', { qos: 1 });
    await closed;
    own.end(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(observer.messages.some((x) => x.topic.endsWith('/forged'))).toBe(false);
  });
});

describe('lifecycle events survive SIGKILL', () => {
  const dir = tempDir('events-kill');
  const cleanups: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });

  it('an event committed before the kill arrives once after the restart', async () => {
    const sandbox = await startSandboxProcess(dir);
    cleanups.push(() => sandbox.process.kill());
    // IoT Core's data plane is out of reach through this relay until the restart.
    const relay = await startTcpProxy(sandbox.dataPort);
    relay.setOpen(false);
    cleanups.push(() => relay.close());
    const cfg = await gatewayConfig(dir, sandbox, { upstreamPort: relay.port });
    withEvents(cfg.file, { privacy: { maskIdentifiers: false } });
    let gateway = await startGatewayProcess(cfg.file);
    cleanups.push(() => gateway.kill());
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`, 'simbridge/#');
    cleanups.push(() => observer.close());

    const imsi = '001010000000711';
    expect(await post(gateway.httpPort, imsi, 'ok/1', 'k1')).toBe(202);
    // The occurrence is committed with its event (the 202 came after the registration's commit).
    expect(await gatewayRows(dir, '%/events/first_contact')).toBe(1);
    await gateway.kill('SIGKILL');

    relay.setOpen(true);
    gateway = await startGatewayProcess(cfg.file);
    await observer.waitUntil((m) => eventsOf(m, 'first_contact').length >= 1, 60_000);
    await observer.waitUntil((m) => eventsOf(m, 'certificate_vended').length >= 1, 60_000);
    await new Promise((r) => setTimeout(r, 1500));
    const first = eventsOf(observer.messages, 'first_contact');
    expect(first).toHaveLength(1);
    // Unmasked as configured.
    expect(first[0]!.sim.imsi).toBe(imsi);
    expect(eventsOf(observer.messages, 'certificate_vended')).toHaveLength(1);
    expect(await gatewayRows(dir)).toBe(0);
  }, 180_000);
});

describe('certificate_rotated events', () => {
  const dir = tempDir('events-rotation');
  const cleanups: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });

  it('each rotation is published once', async () => {
    const sandbox = await startSandboxProcess(dir);
    cleanups.push(() => sandbox.process.kill());
    // Every certificate is due at once (maxAgeDays 0), and the job runs every 3 seconds.
    const cfg = await gatewayConfig(dir, sandbox, { vending: { rotation: { enabled: true, schedule: '*/3 * * * * *', maxAgeDays: 0, retireAfterMs: 0 } } });
    withEvents(cfg.file);
    let gateway = await startGatewayProcess(cfg.file);
    cleanups.push(() => gateway.kill());
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`, 'simbridge/#');
    cleanups.push(() => observer.close());

    const imsi = '001010000000721';
    expect(await post(gateway.httpPort, imsi, 'ok/1', 'r1')).toBe(202);
    await observer.waitUntil((m) => eventsOf(m, 'certificate_rotated').length >= 2, 90_000);
    await gateway.kill();
    // Rotation off; whatever was left queued at the stop goes after the restart.
    const config = parse(readFileSync(cfg.file, 'utf8'));
    config.vending.rotation.enabled = false;
    writeFileSync(cfg.file, stringify(config));
    gateway = await startGatewayProcess(cfg.file);
    const db = await gatewayState(join(dir, 'gateway'));
    cleanups.push(() => db.close());
    // Rotations are the vended rows that replace a certificate (filtered here: JSON functions differ by dialect).
    const rotations = async () =>
      (await db.all<{ detail: string }>("SELECT detail FROM audit WHERE kind = 'vended' ORDER BY id"))
        .map((r) => JSON.parse(r.detail) as { certificateId: string; replaces?: string })
        .filter((d) => d.replaces != null);
    // A rotation the stop interrupted may still finish after the restart: wait until the two agree.
    await observer.waitUntil(async (m) => eventsOf(m, 'certificate_rotated').length >= (await rotations()).length && (await gatewayRows(dir)) === 0, 60_000);
    await new Promise((r) => setTimeout(r, 1500));
    const audited = await rotations();
    const published = eventsOf(observer.messages, 'certificate_rotated');
    expect(published.map((ev) => [ev.certificateId, ev.previousCertificateId])).toEqual(audited.map((a) => [a.certificateId, a.replaces]));
    expect(published.every((ev) => ev.thing === `sim-${maskId(imsi)}`)).toBe(true);
  }, 240_000);
});
