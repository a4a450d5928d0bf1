// A job created with @aws-sdk/client-iot against the sandbox reaches a sleeping CoAP device
// (libcoap's coap-client-notls) in the 2.04 of its reading, and the device's POST /jobs/{jobId}
// becomes UpdateJobExecution as its thing, answered in CoAP's codes.
import { join } from 'node:path';
import { CancelJobCommand, CreateJobCommand, DescribeJobExecutionCommand, type IoTClient } from '@aws-sdk/client-iot';
import { decode as cborDecode, encode as cborEncode } from 'cbor-x';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { coapClient, coapParse, coapRequest, datagrams } from './helpers/datagram.ts';
import { findPeer } from './helpers/interop.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { scrapeMetrics } from './helpers/http.ts';
import { gatewayStores, withGatewayState } from './helpers/storage-mode.ts';

const client = findPeer('coap-client-notls', 'libcoap3-bin');
const IMEI = '490154203237518';
// The device in a sleepingJobs group, one in a group still using the former name httpJobs, one in a group without Jobs.
const SIMS = { device: '001010000000861', legacy: '001010000000862', off: '001010000000863' };
const thingOf = (imsi: string) => `sim-${imsi}`;
const targetOf = (imsi: string) => `arn:aws:iot:us-east-1:123456789012:thing/${thingOf(imsi)}`;
const FW_SHA = 'a'.repeat(64);

interface PendingJobs {
  id: number;
  downlink: unknown[];
  jobs?: { jobId: string; status: string; versionNumber: number; document: unknown }[];
}

describe.skipIf(!client)('Jobs for a sleeping CoAP device with coap-client-notls', () => {
  const dir = tempDir('jobs-coap');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let iot: IoTClient;
  const url = (path: string, imsi: string) => `coap://127.0.0.1:${gateway.coapPort}/${path}?imsi=${imsi}&imei=${IMEI}`;

  /** A Confirmable reading; the 2.04's body (undefined when the answer is the bare code). */
  const wake = async (imsi = SIMS.device): Promise<PendingJobs | undefined> => {
    const run = await coapClient(client!, ['-m', 'post', '-e', 'reading', url('topics/meter', imsi)]);
    expect(run.code, run.out).toBe(0);
    expect(run.out).not.toMatch(/[45]\.\d\d/);
    return run.out.trim() ? (JSON.parse(run.out.trim()) as PendingJobs) : undefined;
  };
  /** Wakes until the 2.04 lists what is wanted (the list comes from IoT Core on the device's session). */
  const wakeUntil = async (want: (a: PendingJobs | undefined) => boolean, imsi = SIMS.device): Promise<PendingJobs | undefined> => {
    for (let i = 0; i < 20; i++) {
      const a = await wake(imsi);
      if (want(a)) return a;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`the 2.04 never carried the expected jobs:\n${gateway.output.slice(-3000)}`);
  };
  /** A JSON report (Content-Format 50) with coap-client-notls at -v 7, which logs the answer's code. */
  const report = async (jobId: string, body: unknown, imsi = SIMS.device) => {
    const run = await coapClient(client!, ['-v', '7', '-m', 'post', '-t', '50', '-e', JSON.stringify(body), url(`jobs/${jobId}`, imsi)]);
    // The logged answer: `v:1 t:ACK c:4.09 i:… [ options ] :: 'payload'`.
    const [, code, payload] = /t:ACK c:(\d\.\d\d) .*?(?::: '(.*)')?$/m.exec(run.out) ?? [];
    return { code, body: payload?.startsWith('{') ? (JSON.parse(payload) as Record<string, unknown>) : payload, out: run.out };
  };
  const audit = (imsi: string) => withGatewayState(join(dir, 'gateway'), (db) => db.all<{ kind: string; detail: string }>('SELECT kind, detail FROM audit WHERE imsi = ? ORDER BY id', imsi));

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox, {
      listeners: { coap: { identity: 'claimed', perAddressPerSecond: 1000, perAddressBurst: 1000 } },
      groups: { default: { sleepingJobs: true }, legacy: { httpJobs: true }, off: {} },
      // The job documents here name files on no real host: nothing is fetched before a device asks.
      files: { prefetch: false },
    });
    const opened = await gatewayStores(join(dir, 'gateway'));
    await opened.stores.sims.register({ imsi: SIMS.legacy, group: 'legacy', thingName: thingOf(SIMS.legacy) });
    await opened.stores.sims.register({ imsi: SIMS.off, group: 'off', thingName: thingOf(SIMS.off) });
    await opened.close();
    gateway = await startGatewayProcess(cfg.file);
    iot = sandboxIotClient(sandbox.controlEndpoint);
  });

  afterAll(async () => {
    iot?.destroy();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('gets the job in its 2.04, reports it with POST /jobs/{jobId}; DescribeJobExecution shows SUCCEEDED', async () => {
    // The first request vends the thing; nothing is pending, nothing held, no Accept: the bare 2.04.
    expect(await wake()).toBeUndefined();
    const document = { firmware: '5.0', files: [{ fileName: 'fw-5.0.bin', url: 'https://firmware.invalid/fw-5.0.bin', sha256: FW_SHA }] };
    await iot.send(new CreateJobCommand({ jobId: 'fw-5-0', targets: [targetOf(SIMS.device)], document: JSON.stringify(document) }));

    const woken = await wakeUntil((a) => (a?.jobs ?? []).length > 0);
    expect(woken).toMatchObject({ id: expect.any(Number), downlink: [] });
    // The file is pointed at the gateway's copy on the CoAP listener, served block-wise there.
    expect(woken!.jobs).toEqual([
      { jobId: 'fw-5-0', status: 'QUEUED', versionNumber: 1, executionNumber: expect.any(Number), document: { ...document, files: [{ ...document.files[0], gatewayFile: `/files/${FW_SHA}` }] } },
    ]);

    const started = await report('fw-5-0', { status: 'IN_PROGRESS', expectedVersion: 1, statusDetails: { step: 'download' } });
    expect(started, started.out).toMatchObject({ code: '2.04', body: { status: 'accepted', jobId: 'fw-5-0', execution: { status: 'IN_PROGRESS', statusDetails: { step: 'download' }, versionNumber: 2 } } });

    // A report made from a stale 2.04 is a version conflict, with the current state to start again from.
    const stale = await report('fw-5-0', { status: 'SUCCEEDED', expectedVersion: 1 });
    expect(stale, stale.out).toMatchObject({ code: '4.09', body: { error: 'job_version_conflict', execution: { status: 'IN_PROGRESS', versionNumber: 2 } } });
    expect((await audit(SIMS.device)).filter((r) => r.kind === 'job_update_refused').map((r) => JSON.parse(r.detail).reason)).toEqual(['job_version_conflict']);

    // SUCCEEDED in CBOR (Content-Format 60), answered in CBOR (Accept 60).
    const body = cborEncode({ status: 'SUCCEEDED', expectedVersion: 2, statusDetails: { installed: '5.0' } });
    const cbor60 = Buffer.from([60]);
    const [answer] = await datagrams(
      gateway.coapPort!,
      [coapRequest({ path: 'jobs/fw-5-0', query: [`imsi=${SIMS.device}`, `imei=${IMEI}`], messageId: 5001, options: [{ name: 'Content-Format', value: cbor60 }, { name: 'Accept', value: cbor60 }], payload: body })],
      { until: (g) => g.length > 0, waitMs: 15_000 },
    );
    const parsed = coapParse(answer!);
    expect(parsed.code).toBe('2.04');
    expect(parsed.options.find((o) => o.name === 'Content-Format')?.value).toEqual(cbor60);
    expect(cborDecode(parsed.payload)).toMatchObject({ status: 'accepted', jobId: 'fw-5-0', execution: { status: 'SUCCEEDED', versionNumber: 3 } });

    const { execution } = await iot.send(new DescribeJobExecutionCommand({ jobId: 'fw-5-0', thingName: thingOf(SIMS.device) }));
    expect(execution).toMatchObject({ status: 'SUCCEEDED', statusDetails: { detailsMap: { installed: '5.0' } }, versionNumber: 3 });

    // Nothing pending any more: the bare 2.04 again. A finished job cannot be reported again.
    await wakeUntil((a) => a === undefined);
    expect(await report('fw-5-0', { status: 'FAILED' })).toMatchObject({ code: '4.09', body: { error: 'job_finished', execution: { status: 'SUCCEEDED' } } });
  });

  it('answers a removed job and an unknown job with 4.04, a bad report with 4.00, and a group without Jobs with 4.04 jobs_disabled', async () => {
    await iot.send(new CreateJobCommand({ jobId: 'fw-gone', targets: [targetOf(SIMS.device)], document: '{}' }));
    await wakeUntil((a) => (a?.jobs ?? []).some((j) => j.jobId === 'fw-gone'));
    await iot.send(new CancelJobCommand({ jobId: 'fw-gone' }));
    const removed = await report('fw-gone', { status: 'SUCCEEDED' });
    expect(removed, removed.out).toMatchObject({ code: '4.04', body: { error: 'job_removed', execution: { status: 'CANCELED' } } });
    const unknown = await report('never-made', { status: 'SUCCEEDED' });
    expect(unknown.code, unknown.out).toBe('4.04');
    expect(unknown.out).toMatch(/job_not_found/);
    const bad = await report('fw-5-0', { status: 'DONE' });
    expect(bad.code, bad.out).toBe('4.00');
    expect(bad.out).toMatch(/job_update_invalid/);
    const notJson = await coapClient(client!, ['-v', '7', '-m', 'post', '-t', '50', '-e', '{oops', url('jobs/fw-5-0', SIMS.device)]);
    expect(notJson.out).toMatch(/t:ACK c:4\.00/);
    const off = await report('fw-5-0', { status: 'SUCCEEDED' }, SIMS.off);
    expect(off.code, off.out).toBe('4.04');
    expect(off.out).toMatch(/jobs_disabled/);
    const metrics = await scrapeMetrics(gateway.adminPort);
    for (const reason of ['job_removed', 'job_not_found', 'job_update_invalid', 'jobs_disabled', 'job_version_conflict']) expect(metrics).toMatch(new RegExp(`simbridge_refusals_total\\{[^}]*protocol="coap"[^}]*reason="${reason}"`));
  });

  it('carries the jobs in CBOR when asked with Accept 60, and honours the former flag name httpJobs', async () => {
    await wake(SIMS.legacy); // vends the thing
    await iot.send(new CreateJobCommand({ jobId: 'reboot-1', targets: [targetOf(SIMS.legacy)], document: JSON.stringify({ operation: 'reboot' }) }));
    let body: PendingJobs | undefined;
    for (let i = 0; i < 20 && !body?.jobs?.length; i++) {
      const [answer] = await datagrams(
        gateway.coapPort!,
        [coapRequest({ path: 'topics/meter', query: [`imsi=${SIMS.legacy}`, `imei=${IMEI}`], messageId: 6000 + i, options: [{ name: 'Accept', value: Buffer.from([60]) }], payload: Buffer.from('r') })],
        { until: (g) => g.length > 0, waitMs: 15_000 },
      );
      const parsed = coapParse(answer!);
      expect(parsed.code).toBe('2.04');
      body = cborDecode(parsed.payload) as PendingJobs;
      if (!body.jobs?.length) await new Promise((r) => setTimeout(r, 250));
    }
    expect(body!.jobs).toEqual([{ jobId: 'reboot-1', status: 'QUEUED', versionNumber: 1, executionNumber: expect.any(Number), document: { operation: 'reboot' } }]);
    // A group without Jobs gets no jobs key at all.
    await wake(SIMS.off);
    const [answer] = await datagrams(
      gateway.coapPort!,
      [coapRequest({ path: 'topics/meter', query: [`imsi=${SIMS.off}`, `imei=${IMEI}`], messageId: 7001, options: [{ name: 'Accept', value: Buffer.from([50]) }], payload: Buffer.from('r') })],
      { until: (g) => g.length > 0, waitMs: 15_000 },
    );
    expect(JSON.parse(coapParse(answer!).payload.toString())).not.toHaveProperty('jobs');
  });
});
