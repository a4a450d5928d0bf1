// Firmware named by an IoT MQTT-based file delivery stream. A stream is created with the real
// @aws-sdk/client-iot against the sandbox (its bytes uploaded through the sandbox's test-only blob
// route, as IoT Core would read them from S3); a job created the same way names it; 20 sleeping HTTP
// devices find it in their 202 and fetch it from the gateway, which read it once, block by block, on an
// upstream session (counted at the sandbox). The sandbox refuses block requests as IoT Core does.
import {
  CreateStreamCommand,
  DeleteStreamCommand,
  DescribeStreamCommand,
  InvalidRequestException,
  ResourceAlreadyExistsException,
  ResourceNotFoundException,
  type IoTClient,
} from '@aws-sdk/client-iot';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSandbox, type Sandbox } from '../sandbox/index.ts';
import { sandboxIotClient, vendThing } from '../sandbox/testkit.ts';
import { createJobWhenVended } from './helpers/cloud.ts';
import { coapClient } from './helpers/datagram.ts';
import { findPeer } from './helpers/interop.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const IMEI = '490154203237518';
const DEVICES = Array.from({ length: 20 }, (_, i) => `0010100000008${String(i).padStart(2, '0')}`);
const ROLE = 'arn:aws:iam::123456789012:role/stream-reader';
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const BLOCK = 4096;
const PER_REQUEST = 4;
const coap = findPeer('coap-client-notls', 'libcoap3-bin');

/** Uploads bytes the sandbox serves as the S3 object s3://bucket/key (sandbox-only route). */
async function putBlob(controlEndpoint: string, bucket: string, key: string, bytes: Buffer): Promise<void> {
  const res = await fetch(`${controlEndpoint}/_sandbox/blobs/${bucket}/${key}`, { method: 'PUT', body: new Uint8Array(bytes) });
  expect(res.status).toBe(200);
  expect(await res.json()).toMatchObject({ size: bytes.length, sha256: sha256(bytes) });
}

describe('firmware from an MQTT-based file delivery stream, through the gateway', () => {
  const dir = tempDir('files-streams');
  const FW = randomBytes(150_000);
  const FW_ID = sha256(FW);
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let iot: IoTClient;

  const headers = (imsi: string) => ({ 'x-imsi': imsi, 'x-imei': IMEI });
  const base = () => `http://127.0.0.1:${gateway.httpPort}`;
  const wake = async (imsi: string) => {
    const res = await fetch(`${base()}/topics/meter?qos=1`, { method: 'POST', headers: headers(imsi), body: 'reading' });
    expect(res.status).toBe(202);
    return (await res.json()) as { jobs?: { jobId: string; document: { files?: Record<string, unknown>[] } }[] };
  };
  const wakeUntil = async (imsi: string, jobId: string) => {
    for (let i = 0; i < 80; i++) {
      const a = await wake(imsi);
      if (a.jobs?.some((j) => j.jobId === jobId)) return a;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`${imsi} never got ${jobId} in its 202:\n${gateway.output.slice(-3000)}`);
  };
  const getFile = (imsi: string, id: string, extra: Record<string, string> = {}) => fetch(`${base()}/v1/files/${id}`, { headers: { ...headers(imsi), ...extra } });
  const served = async () => ((await (await fetch(`${sandbox.controlEndpoint}/_sandbox/streams`)).json()) as { served: Record<string, { requests: number; blocks: number; bytes: number; rejected: number }> }).served;
  const createJob = (jobId: string, imsis: string[], document: unknown) => createJobWhenVended(iot, jobId, imsis, document);

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      groups: { default: { httpJobs: true } },
      files: { streamBlockBytes: BLOCK, streamBlocksPerRequest: PER_REQUEST },
      listeners: { coap: { identity: 'claimed', perAddressPerSecond: 1000, perAddressBurst: 1000 } },
    });
    gateway = await startGatewayProcess(cfg.file);
    iot = sandboxIotClient(sandbox.controlEndpoint);
  }, 120_000);

  afterAll(async () => {
    iot?.destroy();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('a stream made with CreateStream and named by a job reaches 20 devices with one transfer upstream', async () => {
    await putBlob(sandbox.controlEndpoint, 'firmware', 'fw-5.bin', FW);
    const created = await iot.send(new CreateStreamCommand({ streamId: 'fw-5', description: 'firmware 5', roleArn: ROLE, files: [{ fileId: 0, s3Location: { bucket: 'firmware', key: 'fw-5.bin' } }] }));
    expect(created).toMatchObject({ streamId: 'fw-5', streamArn: 'arn:aws:iot:us-east-1:123456789012:stream/fw-5', streamVersion: 1 });
    const { streamInfo } = await iot.send(new DescribeStreamCommand({ streamId: 'fw-5' }));
    expect(streamInfo).toMatchObject({ streamId: 'fw-5', streamVersion: 1, description: 'firmware 5', files: [{ fileId: 0, s3Location: { bucket: 'firmware', key: 'fw-5.bin' } }], roleArn: ROLE });
    expect(streamInfo!.createdAt).toBeInstanceOf(Date);

    await Promise.all(DEVICES.map((imsi) => wake(imsi)));
    const document = { operation: 'firmware', version: '5.0', files: [{ fileName: 'fw-5.bin', streamId: 'fw-5', fileId: 0, size: FW.length, sha256: FW_ID }] };
    await createJob('fw-5-0', DEVICES, document);
    const woken = await Promise.all(DEVICES.map((imsi) => wakeUntil(imsi, 'fw-5-0')));
    for (const a of woken) {
      expect(a.jobs!.find((j) => j.jobId === 'fw-5-0')!.document).toEqual({ ...document, files: [{ ...document.files[0], gatewayFile: `/v1/files/${FW_ID}` }] });
    }
    const started = Date.now();
    const answers = await Promise.all(
      DEVICES.map(async (imsi) => {
        const res = await getFile(imsi, FW_ID);
        return { status: res.status, etag: res.headers.get('etag'), body: Buffer.from(await res.arrayBuffer()) };
      }),
    );
    console.log(`20 devices fetched ${FW.length} bytes each in ${Date.now() - started} ms (the stream transfer started with the first 202 carrying the job)`);
    for (const a of answers) {
      expect(a.status).toBe(200);
      expect(a.etag).toBe(`"${FW_ID}"`);
      expect(a.body.equals(FW)).toBe(true);
    }
    // One transfer: every block once, in requests of PER_REQUEST blocks.
    const blocks = Math.ceil(FW.length / BLOCK);
    expect((await served())['fw-5']).toEqual({ requests: Math.ceil(blocks / PER_REQUEST), blocks, bytes: FW.length, rejected: 0 });

    for (const [range, start, end] of [
      ['bytes=0-99', 0, 99],
      ['bytes=4090-8200', 4090, 8200],
      ['bytes=-1000', FW.length - 1000, FW.length - 1],
    ] as const) {
      const res = await getFile(DEVICES[3]!, FW_ID, { range });
      expect(res.status, range).toBe(206);
      expect(res.headers.get('content-range')).toBe(`bytes ${start}-${end}/${FW.length}`);
      expect(Buffer.from(await res.arrayBuffer()).equals(FW.subarray(start, end + 1)), range).toBe(true);
    }
    expect((await served())['fw-5']!.blocks).toBe(blocks);
  }, 180_000);

  it.skipIf(!coap)('serves the stream\'s file block-wise over CoAP from the same copy', async () => {
    const out = join(dir, 'coap-fw5.bin');
    const url = `coap://127.0.0.1:${gateway.coapPort}/files/${FW_ID}?imsi=${DEVICES[4]}&imei=${IMEI}`;
    const run = await coapClient(coap!, ['-m', 'get', '-b', '1024', '-o', out, url], 60_000);
    expect(run.code, run.out).toBe(0);
    expect(readFileSync(out).equals(FW)).toBe(true);
    expect((await served())['fw-5']!.blocks).toBe(Math.ceil(FW.length / BLOCK));
  }, 90_000);

  it('does not serve a stream whose bytes do not match the sha256 the job names (502)', async () => {
    const other = randomBytes(9_000);
    await putBlob(sandbox.controlEndpoint, 'firmware', 'wrong.bin', other);
    await iot.send(new CreateStreamCommand({ streamId: 'fw-wrong', roleArn: ROLE, files: [{ fileId: 3, s3Location: { bucket: 'firmware', key: 'wrong.bin' } }] }));
    const claimed = sha256(Buffer.from('what the job says'));
    const imsi = DEVICES[5]!;
    await createJob('fw-wrong', [imsi], { operation: 'firmware', files: [{ streamId: 'fw-wrong', fileId: 3, size: other.length, sha256: claimed }] });
    await wakeUntil(imsi, 'fw-wrong');
    const res = await getFile(imsi, claimed);
    expect(res.status).toBe(502);
    expect(await res.json()).toMatchObject({ error: 'file_checksum_mismatch' });
  }, 60_000);
});

describe('MQTT-based file delivery on the sandbox', () => {
  let dataDir: string;
  let sb: Sandbox;
  let iot: IoTClient;
  const clients: MqttClient[] = [];

  /** Connect, and its own streams topics only (as simbridge's device policy grants). */
  const policy = () => {
    const b = 'arn:aws:iot:us-east-1:123456789012';
    const t = '${iot:Connection.Thing.ThingName}';
    return JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: 'iot:Connect', Resource: `${b}:client/${t}` },
        { Effect: 'Allow', Action: ['iot:Publish', 'iot:Receive'], Resource: `${b}:topic/$aws/things/${t}/streams/*` },
        { Effect: 'Allow', Action: 'iot:Subscribe', Resource: `${b}:topicfilter/$aws/things/${t}/streams/*` },
      ],
    });
  };

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'simbridge-sandbox-streams-'));
    sb = await startSandbox({ dataDir, controlPort: 0, dataPort: 0, observerPort: 0 });
    iot = sandboxIotClient(sb.controlEndpoint);
  });

  afterAll(async () => {
    for (const c of clients) c.end(true);
    iot?.destroy();
    await sb?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('answers CreateStream, DescribeStream and DeleteStream with IoT Core\'s errors', async () => {
    await expect(iot.send(new CreateStreamCommand({ streamId: 's-missing', roleArn: ROLE, files: [{ fileId: 0, s3Location: { bucket: 'b', key: 'nothing' } }] }))).rejects.toBeInstanceOf(InvalidRequestException);
    await putBlob(sb.controlEndpoint, 'b', 'k', Buffer.alloc(1000, 7));
    await iot.send(new CreateStreamCommand({ streamId: 's-1', roleArn: ROLE, files: [{ fileId: 1, s3Location: { bucket: 'b', key: 'k' } }] }));
    await expect(iot.send(new CreateStreamCommand({ streamId: 's-1', roleArn: ROLE, files: [{ fileId: 1, s3Location: { bucket: 'b', key: 'k' } }] }))).rejects.toBeInstanceOf(ResourceAlreadyExistsException);
    await iot.send(new DeleteStreamCommand({ streamId: 's-1' }));
    await expect(iot.send(new DescribeStreamCommand({ streamId: 's-1' }))).rejects.toBeInstanceOf(ResourceNotFoundException);
    await expect(iot.send(new DeleteStreamCommand({ streamId: 's-1' }))).rejects.toBeInstanceOf(ResourceNotFoundException);
  });

  it('serves blocks to the asking thing and refuses what IoT Core refuses on rejected', async () => {
    const bytes = randomBytes(1000);
    await putBlob(sb.controlEndpoint, 'b', 'dev.bin', bytes);
    await iot.send(new CreateStreamCommand({ streamId: 's-dev', roleArn: ROLE, files: [{ fileId: 2, s3Location: { bucket: 'b', key: 'dev.bin' } }] }));
    const dev = await vendThing(iot, 'stream-dev', { policyName: 'streams-policy', policyDocument: policy() });
    const client = await mqtt.connectAsync(`mqtts://${sb.dataHost}:${sb.dataPort}`, { ca: sb.caPem, cert: dev.certPem, key: dev.keyPem, clientId: dev.thingName, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5_000 });
    clients.push(client);
    const got: { topic: string; body: Record<string, any> }[] = [];
    client.on('message', (topic, payload) => got.push({ topic, body: JSON.parse(payload.toString()) }));
    const base = '$aws/things/stream-dev/streams/s-dev';
    await client.subscribeAsync(`${base}/+/json`, { qos: 1 });
    const ask = async (request: Record<string, unknown>, op = 'get') => {
      const before = got.length;
      await client.publishAsync(`${base}/${op}/json`, JSON.stringify(request), { qos: 1 });
      const end = Date.now() + 3_000;
      while (got.length === before && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 50)); // the rest of a multi-block answer
      return got.slice(before);
    };

    const blocks = await ask({ c: 't1', f: 2, l: 256, o: 1, n: 3 });
    expect(blocks.map((m) => [m.topic, m.body.c, m.body.f, m.body.i, m.body.l])).toEqual([
      [`${base}/data/json`, 't1', 2, 1, 256],
      [`${base}/data/json`, 't1', 2, 2, 256],
      [`${base}/data/json`, 't1', 2, 3, 232],
    ]);
    expect(Buffer.concat(blocks.map((m) => Buffer.from(m.body.p, 'base64'))).equals(bytes.subarray(256))).toBe(true);
    expect((await ask({ c: 'd' }, 'describe'))[0]).toEqual({ topic: `${base}/description/json`, body: { c: 'd', s: 1, r: [{ f: 2, z: 1000 }] } });

    const rejected = async (request: Record<string, unknown>) => {
      const [answer, ...more] = await ask(request);
      expect(more).toEqual([]);
      expect(answer!.topic).toBe(`${base}/rejected/json`);
      return answer!.body;
    };
    expect(await rejected({ c: 'r1', f: 2, l: 256, o: 4 })).toMatchObject({ c: 'r1', o: 'OffsetOutOfBounds' });
    expect(await rejected({ c: 'r2', f: 2, l: 255, o: 0 })).toMatchObject({ c: 'r2', o: 'BlockSizeOutOfBounds' });
    expect(await rejected({ c: 'r3', f: 2, l: 131_073, o: 0 })).toMatchObject({ o: 'BlockSizeOutOfBounds' });
    expect(await rejected({ c: 'r4', f: 9, l: 256, o: 0 })).toMatchObject({ o: 'ResourceNotFound' });
    expect(await rejected({ c: 'r5', s: 2, f: 2, l: 256, o: 0 })).toMatchObject({ o: 'VersionMismatch' });
    expect(await rejected({ c: 'x'.repeat(65), f: 2, l: 256 })).toMatchObject({ o: 'InvalidRequest' });
    expect(await rejected({ c: 'r6', l: 256 })).toMatchObject({ o: 'InvalidRequest' }); // no fileId
    const before = got.length;
    await client.publishAsync(`${base}/get/json`, 'not json', { qos: 1 });
    while (got.length === before) await new Promise((r) => setTimeout(r, 10));
    expect(got[before]).toMatchObject({ topic: `${base}/rejected/json`, body: { o: 'InvalidJson' } });
  });

  it('refuses another thing\'s stream topics by policy, and a device publishing an answer', async () => {
    const dev = await vendThing(iot, 'stream-other', { policyName: 'streams-policy', policyDocument: policy() });
    const connect = async () => {
      const c = await mqtt.connectAsync(`mqtts://${sb.dataHost}:${sb.dataPort}`, { ca: sb.caPem, cert: dev.certPem, key: dev.keyPem, clientId: dev.thingName, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5_000 });
      clients.push(c);
      return c;
    };
    for (const topic of ['$aws/things/stream-dev/streams/s-dev/get/json', '$aws/things/stream-other/streams/s-dev/data/json']) {
      const c = await connect();
      const closed = new Promise<void>((resolve) => c.once('close', () => resolve()));
      c.publish(topic, JSON.stringify({ f: 2, l: 256 }), { qos: 1 });
      await closed; // IoT Core closes the connection of a publish it does not authorise
    }
  });
});
