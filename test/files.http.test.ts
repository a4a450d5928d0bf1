// Firmware through the gateway: a job created with @aws-sdk/client-iot against the sandbox names a file
// on a test HTTPS server (sandbox CA); sleeping devices find it in their 202 and fetch it from the
// gateway (GET /v1/files/{id}, HTTP Range; CoAP block-wise with coap-client-notls). One download
// upstream, exact bytes, and nothing served that does not match its sha256.
import type { IoTClient } from '@aws-sdk/client-iot';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFileServer, type FileServer } from '../sandbox/file-server.ts';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { createJobWhenVended } from './helpers/cloud.ts';
import { coapClient } from './helpers/datagram.ts';
import { findPeer } from './helpers/interop.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const IMEI = '490154203237518';
const DEVICES = Array.from({ length: 50 }, (_, i) => `0010100000009${String(i).padStart(2, '0')}`);
const STRANGER = '001010000000999';
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const coap = findPeer('coap-client-notls', 'libcoap3-bin');

interface Accepted {
  jobs?: { jobId: string; document: { files?: { url: string; sha256: string; gatewayFile?: string }[] } }[];
}

describe('firmware files through the gateway', () => {
  const dir = tempDir('files-http');
  const FW = randomBytes(40_000);
  const FW_ID = sha256(FW);
  const BAD = randomBytes(10_000);
  const BAD_ID = sha256(BAD);
  let sandbox: SandboxProcess;
  let files: FileServer;
  let gateway: GatewayProcess;
  let iot: IoTClient;

  const headers = (imsi: string) => ({ 'x-imsi': imsi, 'x-imei': IMEI });
  const base = () => `http://127.0.0.1:${gateway.httpPort}`;
  const wake = async (imsi: string): Promise<Accepted> => {
    const res = await fetch(`${base()}/topics/meter?qos=1`, { method: 'POST', headers: headers(imsi), body: 'reading' });
    expect(res.status).toBe(202);
    return (await res.json()) as Accepted;
  };
  const wakeUntil = async (imsi: string, jobId: string): Promise<Accepted> => {
    for (let i = 0; i < 80; i++) {
      const a = await wake(imsi);
      if (a.jobs?.some((j) => j.jobId === jobId)) return a;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`${imsi} never got ${jobId} in its 202:\n${gateway.output.slice(-3000)}`);
  };
  const getFile = (imsi: string, id: string, extra: Record<string, string> = {}) => fetch(`${base()}/v1/files/${id}`, { headers: { ...headers(imsi), ...extra } });
  const createJob = (jobId: string, imsis: string[], document: unknown) => createJobWhenVended(iot, jobId, imsis, document);

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    files = await startFileServer({ certPem: readFileSync(sandbox.serverCertFile, 'utf8'), keyPem: readFileSync(sandbox.serverKeyFile, 'utf8') });
    files.put('fw-4.0.bin', FW);
    files.put('bad.bin', BAD);
    const cfg = await gatewayConfig(dir, sandbox, {
      groups: { default: { httpJobs: true } },
      files: { caFile: sandbox.caFile },
      listeners: { coap: { identity: 'claimed', perAddressPerSecond: 1000, perAddressBurst: 1000 } },
    });
    gateway = await startGatewayProcess(cfg.file);
    iot = sandboxIotClient(sandbox.controlEndpoint);
  }, 120_000);

  afterAll(async () => {
    iot?.destroy();
    await gateway?.kill();
    await files?.close();
    await sandbox?.process.kill();
  });

  it('50 devices fetching one firmware file cause exactly one download', async () => {
    // First contact vends each device's thing; then one job targets all of them.
    await Promise.all([...DEVICES, STRANGER].map((imsi) => wake(imsi)));
    const document = { operation: 'firmware', version: '4.0', files: [{ fileName: 'fw-4.0.bin', url: files.url('fw-4.0.bin'), sha256: FW_ID, size: FW.length }] };
    // The file server holds its answers back, so the one download (started by the first 202 that
    // carries the job) is still running while devices wake and ask.
    files.setDelay(5_000);
    await createJob('fw-4-0', DEVICES, document);
    const woken = await Promise.all(DEVICES.map((imsi) => wakeUntil(imsi, 'fw-4-0')));
    for (const a of woken) {
      // The document is IoT Core's, with the gateway's copy named beside the url.
      expect(a.jobs!.find((j) => j.jobId === 'fw-4-0')!.document).toEqual({ ...document, files: [{ ...document.files[0], gatewayFile: `/v1/files/${FW_ID}` }] });
    }

    // The first 202 carrying the job started the download (files.prefetch) before any device asked;
    // on a busy machine its request may reach the file server a moment after the last answer.
    await expect.poll(() => files.requests('fw-4.0.bin'), { timeout: 4_000 }).toBe(1);
    const overlapping = files.downloads('fw-4.0.bin') === 0;
    const started = Date.now();
    const answers = await Promise.all(
      DEVICES.map(async (imsi) => {
        const res = await getFile(imsi, FW_ID);
        return { status: res.status, etag: res.headers.get('etag'), length: res.headers.get('content-length'), body: Buffer.from(await res.arrayBuffer()) };
      }),
    );
    files.setDelay(0);
    console.log(`50 devices fetched ${FW.length} bytes each in ${Date.now() - started} ms${overlapping ? ', joining the download still under way' : ''}`);
    for (const a of answers) {
      expect(a.status).toBe(200);
      expect(a.etag).toBe(`"${FW_ID}"`);
      expect(a.length).toBe(String(FW.length));
      expect(a.body.equals(FW)).toBe(true);
    }
    expect(files.downloads('fw-4.0.bin')).toBe(1);
    expect(files.requests('fw-4.0.bin')).toBe(1);
  }, 180_000);

  it('answers Range requests with the exact bytes (206), 416 past the end, and the whole file for what it cannot read', async () => {
    const imsi = DEVICES[0]!;
    const ranged = async (range: string) => {
      const res = await getFile(imsi, FW_ID, { range });
      return { status: res.status, contentRange: res.headers.get('content-range'), length: res.headers.get('content-length'), body: Buffer.from(await res.arrayBuffer()) };
    };
    const cases: [string, number, number][] = [
      ['bytes=0-99', 0, 99],
      ['bytes=1000-1999', 1000, 1999],
      ['bytes=39990-', 39990, 39999],
      ['bytes=-500', 39500, 39999],
      ['bytes=39000-99999', 39000, 39999],
    ];
    for (const [range, start, end] of cases) {
      const r = await ranged(range);
      expect(r.status, range).toBe(206);
      expect(r.contentRange).toBe(`bytes ${start}-${end}/${FW.length}`);
      expect(r.length).toBe(String(end - start + 1));
      expect(r.body.equals(FW.subarray(start, end + 1)), range).toBe(true);
    }
    const past = await ranged('bytes=40000-');
    expect(past.status).toBe(416);
    expect(past.contentRange).toBe(`bytes */${FW.length}`);
    expect(JSON.parse(past.body.toString())).toMatchObject({ error: 'range_not_satisfiable' });
    const several = await ranged('bytes=0-1,5-6');
    expect([several.status, several.body.equals(FW)]).toEqual([200, true]);
    // If-Range with another validator: the device's partial copy is of other bytes, so the whole file.
    const stale = await getFile(imsi, FW_ID, { range: 'bytes=0-9', 'if-range': '"0000"' });
    expect(stale.status).toBe(200);
    expect(Buffer.from(await stale.arrayBuffer()).equals(FW)).toBe(true);
    const head = await fetch(`${base()}/v1/files/${FW_ID}`, { method: 'HEAD', headers: headers(imsi) });
    expect([head.status, head.headers.get('content-length'), head.headers.get('etag'), (await head.arrayBuffer()).byteLength]).toEqual([200, String(FW.length), `"${FW_ID}"`, 0]);
    const unchanged = await getFile(imsi, FW_ID, { 'if-none-match': `"${FW_ID}"` });
    expect(unchanged.status).toBe(304);
    expect(files.downloads('fw-4.0.bin')).toBe(1);
  });

  it('serves a file only to a device whose own pending job names it', async () => {
    const stranger = await getFile(STRANGER, FW_ID);
    expect(stranger.status).toBe(404);
    expect(await stranger.json()).toMatchObject({ error: 'file_not_found' });
    const invalid = await getFile(DEVICES[0]!, 'not-a-sha256');
    expect(invalid.status).toBe(400);
    expect(await invalid.json()).toMatchObject({ error: 'file_id_invalid' });
    const anonymous = await fetch(`${base()}/v1/files/${FW_ID}`, { headers: { 'x-imsi': 'abc' } });
    expect(anonymous.status).toBe(400);
    expect(await anonymous.json()).toMatchObject({ error: 'invalid_imsi' });
  });

  it('does not serve a corrupted download (502); the next request after the server is fixed gets the file', async () => {
    const imsi = DEVICES[1]!;
    // Corrupted from the start: the prefetch the 202 starts fails too.
    files.corrupt('bad.bin', true);
    await createJob('fw-bad', [imsi], { operation: 'firmware', files: [{ url: files.url('bad.bin'), sha256: BAD_ID }] });
    await wakeUntil(imsi, 'fw-bad');
    const refused = await getFile(imsi, BAD_ID);
    expect(refused.status).toBe(502);
    expect(await refused.json()).toMatchObject({ error: 'file_checksum_mismatch' });
    const failedDownloads = files.downloads('bad.bin');
    expect(failedDownloads).toBeGreaterThanOrEqual(1);

    files.corrupt('bad.bin', false);
    const served = await getFile(imsi, BAD_ID);
    expect(served.status).toBe(200);
    expect(Buffer.from(await served.arrayBuffer()).equals(BAD)).toBe(true);
    expect(files.downloads('bad.bin')).toBe(failedDownloads + 1);
  });

  it.skipIf(!coap)('serves the file block-wise over CoAP (Block2) to coap-client-notls, byte for byte', async () => {
    const imsi = DEVICES[2]!;
    const out = join(dir, 'coap-fw.bin');
    const url = `coap://127.0.0.1:${gateway.coapPort}/files/${FW_ID}?imsi=${imsi}&imei=${IMEI}`;
    const run = await coapClient(coap!, ['-v', '7', '-m', 'get', '-b', '256', '-o', out, url], 60_000);
    expect(run.code, run.out).toBe(0);
    expect(readFileSync(out).equals(FW)).toBe(true);
    // One 2.05 per 256-byte block, each carrying its Block2 option (libcoap logs every PDU at -v 7).
    const blocks = new Set(run.out.split('\n').flatMap((l) => (/c:2\.05/.test(l) ? [/Block2:(\d+)\/[M_-]\/256/.exec(l)?.[1]] : [])));
    expect(blocks.size, run.out.slice(0, 2000)).toBe(Math.ceil(FW.length / 256));
    expect(blocks.has(undefined)).toBe(false);
    // A device without a job naming the file gets 4.04.
    const stranger = await coapClient(coap!, ['-m', 'get', `coap://127.0.0.1:${gateway.coapPort}/files/${FW_ID}?imsi=${STRANGER}&imei=${IMEI}`]);
    expect(stranger.out).toMatch(/4\.04|file_not_found/);
    expect(files.downloads('fw-4.0.bin')).toBe(1);
  }, 90_000);
});
