import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decode as cborDecode } from 'cbor-x';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { coapClient, coapParse, coapRequest, datagrams } from './helpers/datagram.ts';
import { findPeer } from './helpers/interop.ts';
import { Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { scrapeMetrics } from './helpers/http.ts';
import { gatewayStores, withGatewayState } from './helpers/storage-mode.ts';

// libcoap's coap-client-notls is the device; a raw UDP socket plays the device where a test needs
// exact control of the datagrams (a retransmission is the same datagram sent again).
const client = findPeer('coap-client-notls', 'libcoap3-bin');
const X = '490154203237518';
const Y = '353456789012348';
const SIMS = { a: '001010000000401', big: '001010000000402', locked: '001010000000403', suspended: '001010000000404', retx: '001010000000405', cbor: '001010000000406' };
const claim = (imsi: string, imei = X) => `imsi=${imsi}&imei=${imei}`;

describe.skipIf(!client)('CoAP ingress with coap-client-notls as the device', () => {
  const dir = tempDir('coap');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let observer: Observer;
  let url: string;
  const audit = async (imsi: string) =>
    (await withGatewayState(join(dir, 'gateway'), (db) => db.all<{ kind: string }>('SELECT kind FROM audit WHERE imsi = ? ORDER BY id', imsi))).map((r) => r.kind);
  const of = (topic: string) => observer.messages.filter((m) => m.topic === topic);

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, { listeners: { coap: { identity: 'claimed' } }, groups: { default: {}, fleet: { lock: 'locked' }, lab: { lock: 'any' } } });
    const opened = await gatewayStores(join(dir, 'gateway'));
    const { sims } = opened.stores;
    await sims.register({ imsi: SIMS.locked, group: 'fleet', thingName: `sim-${SIMS.locked}`, boundImei: X });
    await sims.register({ imsi: SIMS.suspended, group: 'lab', thingName: `sim-${SIMS.suspended}` });
    await sims.setStatus(SIMS.suspended, 'suspended');
    await opened.close();
    gateway = await startGatewayProcess(cfg.file);
    expect(gateway.coapPort).toBeGreaterThan(0);
    url = `coap://127.0.0.1:${gateway.coapPort}`;
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('stores a Confirmable POST and answers 2.04 in its ACK; a NON POST is stored too', async () => {
    const con = await coapClient(client!, ['-v', '7', '-m', 'post', '-e', 'con-reading', `${url}/topics/meter?${claim(SIMS.a)}`]);
    expect(con.code, con.out).toBe(0);
    // The answer to the CON is one ACK carrying 2.04 (piggybacked), not an empty ACK and a later response.
    expect(con.out).toMatch(/t:ACK c:2\.04/);
    expect(con.out).not.toMatch(/t:ACK c:0\.00/);
    const non = await coapClient(client!, ['-v', '7', '-N', '-m', 'post', '-e', 'non-reading', `${url}/topics/meter?${claim(SIMS.a)}`]);
    expect(non.out).toMatch(/t:NON c:2\.04/);
    await observer.waitUntil(() => of(`devices/sim-${SIMS.a}/meter`).length >= 2);
    expect(of(`devices/sim-${SIMS.a}/meter`).map((m) => m.payload.toString())).toEqual(['con-reading', 'non-reading']);
  });

  it('carries a 100 KB block-wise body (RFC 7959, -b 1024) byte for byte', async () => {
    const body = randomBytes(100 * 1024);
    const file = join(dir, 'big.bin');
    writeFileSync(file, body);
    const run = await coapClient(client!, ['-m', 'post', '-b', '1024', '-f', file, `${url}/topics/blob?${claim(SIMS.big)}`], 60_000);
    expect(run.code, run.out).toBe(0);
    expect(run.out).not.toMatch(/4\.\d\d|5\.\d\d/);
    await observer.waitUntil(() => of(`devices/sim-${SIMS.big}/blob`).length >= 1, 30_000);
    expect(of(`devices/sim-${SIMS.big}/blob`)[0]!.payload.equals(body)).toBe(true);
  });

  it('answers a retransmitted Confirmable request again and stores it once', async () => {
    const datagram = coapRequest({ path: 'topics/retx', query: [`imsi=${SIMS.retx}`, `imei=${X}`], messageId: 4242, token: Buffer.from('rt'), payload: Buffer.from('once-only') });
    // From one endpoint: twice at once (the second arrives while the first is being committed), then
    // once more after the answer, as a device whose ACK was lost would.
    const answers = await datagrams(gateway.coapPort!, [datagram, datagram, 1000, datagram], { waitMs: 1000 });
    expect(answers.length).toBeGreaterThanOrEqual(2);
    for (const d of answers) expect(coapParse(d)).toMatchObject({ code: '2.04', ack: true, messageId: 4242 });
    await observer.waitUntil(() => of(`devices/sim-${SIMS.retx}/retx`).length >= 1);
    await new Promise((r) => setTimeout(r, 1000)); // room for a duplicate to show up
    expect(of(`devices/sim-${SIMS.retx}/retx`)).toHaveLength(1);
  });

  it('refuses an IMEI lock mismatch and a suspended SIM with 4.03 and audits both', async () => {
    const mismatch = await coapClient(client!, ['-m', 'post', '-e', 'x', `${url}/topics/t?${claim(SIMS.locked, Y)}`]);
    expect(mismatch.out).toMatch(/4\.03 imei_mismatch/);
    const suspended = await coapClient(client!, ['-m', 'post', '-e', 'x', `${url}/topics/t?${claim(SIMS.suspended)}`]);
    expect(suspended.out).toMatch(/4\.03 sim_suspended/);
    expect(await audit(SIMS.locked)).toContain('imei_mismatch');
    expect(await audit(SIMS.suspended)).toContain('sim_suspended');
    const bad = await coapClient(client!, ['-m', 'post', '-e', 'x', `${url}/topics/t?imsi=12&imei=${X}`]);
    expect(bad.out).toMatch(/4\.00 invalid_imsi/);
  });

  it('reports the CoAP listener in /readyz', async () => {
    const ready = (await (await fetch(`http://127.0.0.1:${gateway.adminPort}/readyz`)).json()) as { checks: Record<string, boolean> };
    expect(ready.checks).toMatchObject({ coap: true, mqtt: true, http: true });
    expect(ready.checks).not.toHaveProperty('udp'); // not enabled here
  });

  it('answers GET /self, and in CBOR when asked with Accept 60', async () => {
    const json = await coapClient(client!, ['-m', 'get', `${url}/self?${claim(SIMS.cbor)}`]);
    expect(JSON.parse(json.out.trim())).toMatchObject({ imsi: SIMS.cbor, imei: X, thing: `sim-${SIMS.cbor}` });
    const [answer] = await datagrams(gateway.coapPort!, [coapRequest({ code: 'GET', path: 'self', query: [`imsi=${SIMS.cbor}`, `imei=${X}`], options: [{ name: 'Accept', value: Buffer.from([60]) }] })], { until: (g) => g.length > 0 });
    const parsed = coapParse(answer!);
    expect(parsed.code).toBe('2.05');
    expect(parsed.options.find((o) => o.name === 'Content-Format')?.value).toEqual(Buffer.from([60]));
    expect(cborDecode(parsed.payload)).toMatchObject({ imsi: SIMS.cbor, thing: `sim-${SIMS.cbor}` });
  });

  it('survives garbage, truncated, wrong-version, oversize and unknown-critical-option datagrams, each with a counted reason', async () => {
    const good = coapRequest({ path: 'topics/after', query: [`imsi=${SIMS.a}`, `imei=${X}`], messageId: 777, payload: Buffer.from('still-alive') });
    const answers = await datagrams(
      gateway.coapPort!,
      [
        randomBytes(40),
        coapRequest({ path: 'topics/cut', messageId: 770 }).subarray(0, 9), // truncated inside an option
        Buffer.from([0x40, 0x02, 0x03, 0x01, 0xf1, 0x00]), // option delta 15 without a payload marker: a format error (RFC 7252 §3.1)
        Buffer.from([0x80 | (good[0]! & 0x3f), 0, 3, 3, ...good.subarray(4)]), // version 2
        coapRequest({ path: 'topics/x', messageId: 778, options: [{ name: 9999 as never, value: Buffer.from('?') }] }),
        coapRequest({ path: 'topics/x', messageId: 779, payload: randomBytes(3000) }),
        good,
      ],
      { waitMs: 3000, until: (g) => [769, 777, 778, 779].every((id) => g.some((d) => d.readUInt16BE(2) === id)) },
    );
    const byId = new Map(answers.map((d) => [d.readUInt16BE(2), coapParse(d)]));
    expect(byId.get(769)).toMatchObject({ reset: true }); // a malformed CON is rejected with a Reset (§4.2)
    expect(byId.get(778)?.code).toBe('4.02');
    expect(byId.get(779)?.code).toBe('4.13');
    expect(byId.get(777)?.code).toBe('2.04');
    const metrics = await scrapeMetrics(gateway.adminPort);
    for (const reason of ['malformed', 'bad_version', 'bad_option', 'datagram_too_large']) {
      expect(metrics).toMatch(new RegExp(`simbridge_refusals_total\\{protocol="coap",reason="${reason}"\\} [1-9]`));
    }
  });
});

describe.skipIf(!client)('CoAP when the outbox is full, and across SIGKILL', () => {
  const dir = tempDir('coap-full');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess | undefined;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
  });
  afterAll(async () => {
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('answers 5.03 with Max-Age when the device\'s outbox is full', async () => {
    const cfg = await gatewayConfig(join(dir), sandbox, { upstreamPort: 1, storage: { outbox: { perDeviceMaxRows: 2 } }, listeners: { coap: { retryAfterSeconds: 42 } } });
    gateway = await startGatewayProcess(cfg.file);
    const send = (id: number) => datagrams(gateway!.coapPort!, [coapRequest({ path: 'topics/m', query: ['imsi=001010000000411', `imei=${X}`], messageId: id, payload: Buffer.from(`m${id}`) })], { until: (g) => g.length > 0 });
    expect(coapParse((await send(1))[0]!).code).toBe('2.04');
    expect(coapParse((await send(2))[0]!).code).toBe('2.04');
    const full = coapParse((await send(3))[0]!);
    expect(full.code).toBe('5.03');
    expect(full.payload.toString()).toBe('outbox_full');
    expect(full.options.find((o) => o.name === 'Max-Age')?.value).toEqual(Buffer.from([42]));
    await gateway.kill();
    gateway = undefined;
  });

  it('delivers every CoAP request acknowledged before SIGKILL after a restart', async () => {
    const killDir = tempDir('coap-kill');
    const cfg = await gatewayConfig(killDir, sandbox, { listeners: { coap: {} } });
    gateway = await startGatewayProcess(cfg.file);
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    const acked: string[] = [];
    const imsis = ['001010000000421', '001010000000422', '001010000000423'];
    let stop = false;
    const senders = imsis.map(async (imsi, d) => {
      for (let n = 0; !stop && n < 400; n++) {
        const body = `coap-dev${d}-msg${n}`;
        const got = await datagrams(gateway!.coapPort!, [coapRequest({ path: 'topics/seq', query: [`imsi=${imsi}`, `imei=${X}`], messageId: n, payload: Buffer.from(body) })], { waitMs: 500, until: (g) => g.length > 0 }).catch(() => []);
        if (got.length && coapParse(got[0]!).code === '2.04') acked.push(body);
      }
    });
    while (acked.length < 100) await new Promise((r) => setTimeout(r, 2));
    await gateway.kill('SIGKILL');
    stop = true;
    await Promise.all(senders);
    const ackedAtKill = [...acked];
    gateway = await startGatewayProcess(cfg.file);
    await observer.waitUntil((m) => {
      const seen = new Set(m.map((x) => x.payload.toString()));
      return ackedAtKill.every((b) => seen.has(b));
    }, 45_000);
    const seen = new Set(observer.messages.map((x) => x.payload.toString()));
    expect(ackedAtKill.filter((b) => !seen.has(b))).toEqual([]);
    await observer.close();
  });
});
