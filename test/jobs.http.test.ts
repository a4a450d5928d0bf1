// A job created with @aws-sdk/client-iot against the sandbox reaches a sleeping HTTP device in the 202
// it waits for anyway, and the device's POST /v1/jobs/{jobId} becomes UpdateJobExecution as its thing.
import { CancelJobCommand, CreateJobCommand, DescribeJobExecutionCommand, type IoTClient } from '@aws-sdk/client-iot';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const IMSI = '001010000000851';
const IMEI = '490154203237518';
const THING = `sim-${IMSI}`;
const headers = { 'x-imsi': IMSI, 'x-imei': IMEI };

interface Accepted {
  status: string;
  downlink: unknown[];
  jobs?: { jobId: string; status: string; versionNumber: number; document: unknown }[];
}

describe('Jobs for a sleeping HTTP device', () => {
  const dir = tempDir('jobs-http');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let iot: IoTClient;

  const wake = async (body = 'reading'): Promise<Accepted> => {
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/topics/meter?qos=1`, { method: 'POST', headers, body });
    expect(res.status).toBe(202);
    return (await res.json()) as Accepted;
  };
  const report = async (jobId: string, body: unknown) => {
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/v1/jobs/${jobId}`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  /** Wakes until the 202 lists what is wanted (the list comes from IoT Core on the device's session). */
  const wakeUntil = async (want: (a: Accepted) => boolean): Promise<Accepted> => {
    for (let i = 0; i < 20; i++) {
      const a = await wake();
      if (want(a)) return a;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`the 202 never carried the expected jobs:\n${gateway.output.slice(-3000)}`);
  };

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { groups: { default: { httpJobs: true } } })).file);
    iot = sandboxIotClient(sandbox.controlEndpoint);
  });

  afterAll(async () => {
    iot?.destroy();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('gets the job in its 202, reports it with POST /v1/jobs/{jobId}; DescribeJobExecution shows SUCCEEDED', async () => {
    // The first request vends the thing; nothing is pending yet.
    expect((await wake()).jobs).toEqual([]);
    await iot.send(new CreateJobCommand({ jobId: 'fw-3-1', targets: [`arn:aws:iot:us-east-1:123456789012:thing/${THING}`], document: JSON.stringify({ firmware: '3.1', url: 'https://example.com/fw.bin' }) }));

    const woken = await wakeUntil((a) => (a.jobs ?? []).length > 0);
    expect(woken.downlink).toEqual([]);
    expect(woken.jobs).toEqual([{ jobId: 'fw-3-1', status: 'QUEUED', versionNumber: 1, executionNumber: expect.any(Number), document: { firmware: '3.1', url: 'https://example.com/fw.bin' } }]);

    const started = await report('fw-3-1', { status: 'IN_PROGRESS', expectedVersion: 1, statusDetails: { step: 'download' } });
    expect(started).toEqual({ status: 200, body: { status: 'accepted', jobId: 'fw-3-1', execution: { status: 'IN_PROGRESS', statusDetails: { step: 'download' }, versionNumber: 2 } } });

    // A report made from a stale 202 is a version conflict, with the current state to start again from.
    const stale = await report('fw-3-1', { status: 'SUCCEEDED', expectedVersion: 1 });
    expect(stale.status).toBe(409);
    expect(stale.body).toMatchObject({ error: 'job_version_conflict', execution: { status: 'IN_PROGRESS', versionNumber: 2 } });

    expect((await report('fw-3-1', { status: 'SUCCEEDED', expectedVersion: 2, statusDetails: { installed: '3.1' } })).status).toBe(200);
    const { execution } = await iot.send(new DescribeJobExecutionCommand({ jobId: 'fw-3-1', thingName: THING }));
    expect(execution).toMatchObject({ status: 'SUCCEEDED', statusDetails: { detailsMap: { installed: '3.1' } }, versionNumber: 3 });

    await wakeUntil((a) => a.jobs?.length === 0);
    // A finished job cannot be reported again.
    expect((await report('fw-3-1', { status: 'FAILED' })).body).toMatchObject({ error: 'job_finished' });
  });

  it('answers a removed job with 410, an unknown one with 404 and a bad report with 400', async () => {
    await iot.send(new CreateJobCommand({ jobId: 'fw-gone', targets: [`arn:aws:iot:us-east-1:123456789012:thing/${THING}`], document: '{}' }));
    await wakeUntil((a) => (a.jobs ?? []).some((j) => j.jobId === 'fw-gone'));
    await iot.send(new CancelJobCommand({ jobId: 'fw-gone' }));
    const removed = await report('fw-gone', { status: 'SUCCEEDED' });
    expect(removed.status).toBe(410);
    expect(removed.body).toMatchObject({ error: 'job_removed', execution: { status: 'CANCELED' } });
    expect(await report('never-made', { status: 'SUCCEEDED' })).toMatchObject({ status: 404, body: { error: 'job_not_found' } });
    expect(await report('fw-gone', { status: 'DONE' })).toMatchObject({ status: 400, body: { error: 'job_update_invalid' } });
    expect(await report('bad id!', { status: 'SUCCEEDED' })).toMatchObject({ status: 400, body: { error: 'job_update_invalid' } });
  });
});
