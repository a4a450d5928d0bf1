import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPeer } from './helpers/interop.ts';
import { httpFrom, scrapeMetrics } from './helpers/http.ts';
import { closed, connectFrom, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { withGatewayState } from './helpers/storage-mode.ts';

// The mobile network is played by FreeRADIUS's radclient; devices connect from their own loopback
// addresses and are identified by the RADIUS session of that address.
const radclient = findPeer('radclient', 'freeradius-utils');
const SECRET = 'pgw-secret';
const A = { ip: '127.0.0.2', imsi: '001010000000201', imeisv: '4901542032375101', imei: '490154203237518' };
const B = { ip: '127.0.0.3', imsi: '001010000000202', imei: '353456789012340' /* spare 0 */, normalised: '353456789012348' };

describe.skipIf(!radclient)('identity from RADIUS accounting (radclient as the PGW)', () => {
  const dir = tempDir('identity-radius');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;

  function accounting(lines: string[]): Promise<{ code: number | null; out: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(radclient!, ['-x', '-r', '2', '-t', '2', `127.0.0.1:${gateway.radiusPort}`, 'acct', SECRET], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, out }));
      child.stdin.end(lines.join('\n') + '\n');
    });
  }

  const record = (status: string, ip: string, session: string, imsi: string, imei: string) => [
    `Acct-Status-Type = ${status}`,
    `Framed-IP-Address = ${ip}`,
    `Acct-Session-Id = "${session}"`,
    'NAS-IP-Address = 127.0.0.1',
    `Calling-Station-Id = "4479000${ip.split('.').at(-1)}"`,
    `3GPP-IMSI = "${imsi}"`,
    `3GPP-IMEISV = "${imei}"`,
    '3GPP-RAT-Type = 8',
  ];

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      listeners: { mqtt: { host: '127.0.0.1', identity: 'radius' }, http: { host: '127.0.0.1', identity: 'radius' } },
      radius: { enabled: true, clients: [{ address: '127.0.0.1', secret: SECRET }] },
    });
    gateway = await startGatewayProcess(cfg.file);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    for (const [ip, session, imsi, imei] of [
      [A.ip, 'acct-a', A.imsi, A.imeisv],
      [B.ip, 'acct-b', B.imsi, B.imei],
    ]) {
      const run = await accounting(record('Start', ip!, session!, imsi!, imei!));
      expect(run.code, run.out).toBe(0);
    }
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('identifies an MQTT device by its source address, whatever client id it uses', async () => {
    const { code, client } = await connectFrom(A.ip, gateway.mqttPort, { clientId: 'anything' });
    expect(code).toBe(0);
    await client.publishAsync('meter', 'from-a', { qos: 1 });
    await client.endAsync();
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'from-a'));
    expect(observer.messages.find((x) => x.payload.toString() === 'from-a')!.topic).toBe(`devices/sim-${A.imsi}/meter`);
  });

  it('tells an HTTP device who it is (GET /v1/self), with the IMEI normalised from a spare-0 form', async () => {
    const res = await httpFrom(B.ip, gateway.httpPort, 'GET', '/v1/self');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ imsi: B.imsi, imei: B.normalised, msisdn: '44790003', thing: `sim-${B.imsi}`, group: 'default' });
    const post = await httpFrom(B.ip, gateway.httpPort, 'POST', '/topics/meter?qos=1', { body: 'from-b' });
    expect(post.status).toBe(202);
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'from-b' && x.topic === `devices/sim-${B.imsi}/meter`));
  });

  it('refuses an address without a network session (CONNACK 5, HTTP 403)', async () => {
    expect((await connectFrom('127.0.0.9', gateway.mqttPort, { clientId: 'x' })).code).toBe(5);
    const res = await httpFrom('127.0.0.9', gateway.httpPort, 'POST', '/topics/t', { body: 'x' });
    expect(res.status).toBe(403);
    expect(res.body).toMatchObject({ error: 'unidentified' });
  });

  it('refuses a device whose claim disagrees with the network, and audits it', async () => {
    const { code } = await connectFrom(A.ip, gateway.mqttPort, { username: '001010000000999', clientId: A.imei });
    expect(code).toBe(5);
    const res = await httpFrom(A.ip, gateway.httpPort, 'POST', '/topics/t', { headers: { 'x-imei': '353456789012348' }, body: 'x' });
    expect(res.status).toBe(403);
    expect(res.body).toMatchObject({ error: 'claim_mismatch' });
    const n = await withGatewayState(join(dir, 'gateway'), (db) => db.get("SELECT COUNT(*) AS n FROM audit WHERE imsi = ? AND kind = 'claim_mismatch'", A.imsi));
    expect(n).toEqual({ n: 2 });
  });

  it('disconnects a connected device when its session stops, then refuses it', async () => {
    const { code, client } = await connectFrom(A.ip, gateway.mqttPort, { clientId: 'a' });
    expect(code).toBe(0);
    const wasClosed = closed(client, 10_000);
    const run = await accounting(record('Stop', A.ip, 'acct-a', A.imsi, A.imeisv));
    expect(run.code, run.out).toBe(0);
    await wasClosed;
    expect((await connectFrom(A.ip, gateway.mqttPort, { clientId: 'a' })).code).toBe(5);
  });

  it('disconnects a device when a new Start gives its address to another SIM', async () => {
    const { code, client } = await connectFrom(B.ip, gateway.mqttPort, { clientId: 'b' });
    expect(code).toBe(0);
    const wasClosed = closed(client, 10_000);
    const run = await accounting(record('Start', B.ip, 'acct-c', '001010000000203', '4901542032375101'));
    expect(run.code, run.out).toBe(0);
    await wasClosed;
    const self = await httpFrom(B.ip, gateway.httpPort, 'GET', '/v1/self');
    expect(self.body).toMatchObject({ imsi: '001010000000203' });
  });

  it('does not let a replayed Start of a stopped session identify anyone again, and counts RADIUS packets on /metrics', async () => {
    // acct-a was stopped above; this is its Start once more, signed as the PGW signed it.
    const run = await accounting(record('Start', A.ip, 'acct-a', A.imsi, A.imeisv));
    expect(run.code, run.out).toBe(0);
    expect((await connectFrom(A.ip, gateway.mqttPort, { clientId: 'a' })).code).toBe(5);
    const text = await scrapeMetrics(gateway.adminPort);
    const count = (labels: string) => Number(text.match(new RegExp(`simbridge_radius_packets_total\\{${labels}\\} (\\d+)`))?.[1] ?? NaN);
    expect(count('result="accepted",reason=""')).toBe(5);
    expect(count('result="ignored",reason="stopped_session"')).toBe(1);
  });
});
