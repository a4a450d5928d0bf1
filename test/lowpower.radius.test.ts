import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { coapClient, datagrams, socatSend } from './helpers/datagram.ts';
import { findPeer } from './helpers/interop.ts';
import { Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { scrapeMetrics } from './helpers/http.ts';
import { gatewayStores, withGatewayState } from './helpers/storage-mode.ts';

// The mobile network is radclient; devices are coap-client-notls and socat, each from its own loopback
// address, identified by the RADIUS session of that address.
const radclient = findPeer('radclient', 'freeradius-utils');
const coap = findPeer('coap-client-notls', 'libcoap3-bin');
const socat = findPeer('socat', 'socat');
const SECRET = 'pgw-secret';
const A = { ip: '127.0.0.2', imsi: '001010000000501', imeisv: '4901542032375101' };
const B = { ip: '127.0.0.3', imsi: '001010000000502', imeisv: '4901542032375101' }; // locked to another device
const C = { ip: '127.0.0.4', imsi: '001010000000503', imeisv: '4901542032375101' }; // group with udpAck: none
const OTHER_DEVICE = '353456789012348';

describe.skipIf(!radclient || !coap || !socat)('CoAP and raw UDP identified by RADIUS (radclient, coap-client-notls, socat)', () => {
  const dir = tempDir('lowpower-radius');
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
  const start = (d: typeof A) => [
    'Acct-Status-Type = Start',
    `Framed-IP-Address = ${d.ip}`,
    `Acct-Session-Id = "lp-${d.imsi}"`,
    'NAS-IP-Address = 127.0.0.1',
    `3GPP-IMSI = "${d.imsi}"`,
    `3GPP-IMEISV = "${d.imeisv}"`,
    '3GPP-RAT-Type = 8', // NB-IoT
  ];
  const metrics = () => scrapeMetrics(gateway.adminPort);

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      listeners: { coap: { identity: 'radius' }, udp: { identity: 'radius', perAddressPerSecond: 20, perAddressBurst: 20 } },
      radius: { enabled: true, clients: [{ address: '127.0.0.1', secret: SECRET }] },
      groups: { default: { udpAck: 'commit' }, fleet: { lock: 'locked', udpAck: 'commit' }, quiet: { udpAck: 'none', udpTopic: 'meters/{imsi}/raw' } },
    });
    const opened = await gatewayStores(join(dir, 'gateway'));
    await opened.stores.sims.register({ imsi: B.imsi, group: 'fleet', thingName: `sim-${B.imsi}`, boundImei: OTHER_DEVICE });
    await opened.stores.sims.register({ imsi: C.imsi, group: 'quiet', thingName: `sim-${C.imsi}` });
    await opened.close();
    gateway = await startGatewayProcess(cfg.file);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    for (const d of [A, B, C]) {
      const run = await accounting(start(d));
      expect(run.code, run.out).toBe(0);
    }
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('takes a CoAP POST and answers GET /self for the address\'s SIM, with no identity in the request', async () => {
    const post = await coapClient(coap!, ['-a', A.ip, '-m', 'post', '-e', 'coap-by-radius', `coap://127.0.0.1:${gateway.coapPort}/topics/meter`]);
    expect(post.code, post.out).toBe(0);
    const self = await coapClient(coap!, ['-a', A.ip, '-m', 'get', `coap://127.0.0.1:${gateway.coapPort}/self`]);
    expect(JSON.parse(self.out.trim())).toMatchObject({ imsi: A.imsi, imei: '490154203237518', thing: `sim-${A.imsi}` });
    await observer.waitUntil((m) => m.some((x) => x.topic === `devices/sim-${A.imsi}/meter` && x.payload.toString() === 'coap-by-radius'));
  });

  it('stores a raw UDP datagram (socat) byte for byte under udpTopic and acknowledges it with 0x00 after the commit', async () => {
    const payload = Buffer.concat([Buffer.from([0x00, 0xff, 0x7f]), randomBytes(197)]);
    const ack = await socatSend(gateway.udpPort!, payload, A.ip);
    expect(ack).toEqual(Buffer.from([0x00]));
    await observer.waitUntil((m) => m.some((x) => x.payload.equals(payload)));
    expect(observer.messages.find((x) => x.payload.equals(payload))!.topic).toBe(`devices/sim-${A.imsi}/udp`);
  });

  it('refuses an IMEI lock mismatch over both, answering UDP with 0x01 and the reason, and audits it', async () => {
    const ack = await socatSend(gateway.udpPort!, Buffer.from('reading'), B.ip);
    expect(ack[0]).toBe(0x01);
    expect(ack.subarray(1).toString()).toBe('imei_mismatch');
    const post = await coapClient(coap!, ['-a', B.ip, '-m', 'post', '-e', 'x', `coap://127.0.0.1:${gateway.coapPort}/topics/t`]);
    expect(post.out).toMatch(/4\.03 imei_mismatch/);
    const n = await withGatewayState(join(dir, 'gateway'), (db) => db.get("SELECT COUNT(*) AS n FROM audit WHERE imsi = ? AND kind = 'imei_mismatch'", B.imsi));
    expect(n).toEqual({ n: 2 });
  });

  it('stores without answering for udpAck: none, and never answers an address without a network session', async () => {
    const quiet = await socatSend(gateway.udpPort!, Buffer.from('quiet-reading'), C.ip, 1);
    expect(quiet.length).toBe(0);
    await observer.waitUntil((m) => m.some((x) => x.topic === `meters/${C.imsi}/raw` && x.payload.toString() === 'quiet-reading'));
    const stranger = await socatSend(gateway.udpPort!, Buffer.from('who-am-i'), '127.0.0.9', 1);
    expect(stranger.length).toBe(0);
    expect(await metrics()).toMatch(/simbridge_refusals_total\{protocol="udp",reason="unidentified"\} 1/);
  });

  it('drops an oversize datagram and a flood from one address with counted reasons, while others go on', async () => {
    await datagrams(gateway.udpPort!, [randomBytes(4000)], { from: A.ip, waitMs: 300 });
    // 200 datagrams at once from one address, over its burst of 20.
    await datagrams(gateway.udpPort!, Array.from({ length: 200 }, () => randomBytes(30)), { from: '127.0.0.7', waitMs: 300 });
    const text = await metrics();
    expect(text).toMatch(/simbridge_refusals_total\{protocol="udp",reason="datagram_too_large"\} 1/);
    expect(text).toMatch(/simbridge_refusals_total\{protocol="udp",reason="rate_limited"\} 1[0-9]{2}/);
    expect(await socatSend(gateway.udpPort!, Buffer.from('after-flood'), A.ip)).toEqual(Buffer.from([0x00]));
  });
});
