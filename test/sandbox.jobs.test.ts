// IoT Jobs on the sandbox: created, described, listed and canceled with the real @aws-sdk/client-iot,
// run by mqtt.js things over the Jobs device MQTT topics; and Basic Ingest on the data plane.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CancelJobCommand,
  CreateJobCommand,
  DescribeJobCommand,
  DescribeJobExecutionCommand,
  type IoTClient,
  ListJobExecutionsForThingCommand,
  ResourceAlreadyExistsException,
  ResourceNotFoundException,
} from '@aws-sdk/client-iot';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Sandbox, startSandbox } from '../sandbox/index.ts';
import { sandboxIotClient, type VendedThing, vendThing } from '../sandbox/testkit.ts';

let dataDir: string;
let sb: Sandbox;
let iot: IoTClient;
const clients: MqttClient[] = [];
const arn = (thing: string) => `arn:aws:iot:us-east-1:123456789012:thing/${thing}`;

/** Own topics, own shadow, own Jobs topics, and Basic Ingest under rule `ingest` (as simbridge's policy grants). */
function jobsPolicy(): string {
  const base = 'arn:aws:iot:us-east-1:123456789012';
  const t = '${iot:Connection.Thing.ThingName}';
  return JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      { Effect: 'Allow', Action: 'iot:Connect', Resource: `${base}:client/${t}` },
      { Effect: 'Allow', Action: ['iot:Publish', 'iot:Receive'], Resource: [`${base}:topic/$aws/things/${t}/jobs/*`, `${base}:topic/$aws/rules/ingest/things/${t}/*`] },
      { Effect: 'Allow', Action: 'iot:Subscribe', Resource: [`${base}:topicfilter/$aws/things/${t}/jobs/*`, `${base}:topicfilter/$aws/rules/*`] },
    ],
  });
}

async function connect(dev: VendedThing): Promise<{ client: MqttClient; got: { topic: string; body: Record<string, unknown> }[] }> {
  const client = await mqtt.connectAsync(`mqtts://${sb.dataHost}:${sb.dataPort}`, {
    ca: sb.caPem,
    cert: dev.certPem,
    key: dev.keyPem,
    clientId: dev.thingName,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
  });
  clients.push(client);
  const got: { topic: string; body: Record<string, unknown> }[] = [];
  client.on('message', (topic, payload) => got.push({ topic, body: JSON.parse(payload.toString()) }));
  return { client, got };
}

async function until(cond: () => boolean, ms = 3_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'simbridge-sandbox-jobs-'));
  sb = await startSandbox({ dataDir, controlPort: 0, dataPort: 0, observerPort: 0 });
  iot = sandboxIotClient(sb.controlEndpoint);
});

afterAll(async () => {
  for (const c of clients) c.end(true);
  iot?.destroy();
  await sb?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('jobs on the control plane', () => {
  it('creates, describes, lists and cancels with the real SDK, with IoT Core\'s errors', async () => {
    await vendThing(iot, 'ctl-a', { policyName: 'jobs-policy', policyDocument: jobsPolicy() });
    const created = await iot.send(new CreateJobCommand({ jobId: 'ctl-1', targets: [arn('ctl-a')], document: '{"op":"reboot"}', description: 'reboot' }));
    expect(created).toMatchObject({ jobId: 'ctl-1', jobArn: 'arn:aws:iot:us-east-1:123456789012:job/ctl-1', description: 'reboot' });
    await expect(iot.send(new CreateJobCommand({ jobId: 'ctl-1', targets: [arn('ctl-a')], document: '{}' }))).rejects.toBeInstanceOf(ResourceAlreadyExistsException);
    await expect(iot.send(new CreateJobCommand({ jobId: 'ctl-2', targets: [arn('nobody')], document: '{}' }))).rejects.toBeInstanceOf(ResourceNotFoundException);
    await expect(iot.send(new CreateJobCommand({ jobId: 'ctl-3', targets: [arn('ctl-a')], document: 'not json' }))).rejects.toThrow(/not valid JSON/);

    const { execution } = await iot.send(new DescribeJobExecutionCommand({ jobId: 'ctl-1', thingName: 'ctl-a' }));
    expect(execution).toMatchObject({ jobId: 'ctl-1', status: 'QUEUED', thingArn: arn('ctl-a'), versionNumber: 1 });
    expect(execution!.queuedAt).toBeInstanceOf(Date);
    const list = await iot.send(new ListJobExecutionsForThingCommand({ thingName: 'ctl-a' }));
    expect(list.executionSummaries!.map((s) => [s.jobId, s.jobExecutionSummary!.status])).toEqual([['ctl-1', 'QUEUED']]);

    await iot.send(new CancelJobCommand({ jobId: 'ctl-1', comment: 'not needed' }));
    expect((await iot.send(new DescribeJobExecutionCommand({ jobId: 'ctl-1', thingName: 'ctl-a' }))).execution!.status).toBe('CANCELED');
    expect((await iot.send(new DescribeJobCommand({ jobId: 'ctl-1' }))).job).toMatchObject({ status: 'CANCELED', comment: 'not needed' });
    await expect(iot.send(new DescribeJobExecutionCommand({ jobId: 'nope', thingName: 'ctl-a' }))).rejects.toBeInstanceOf(ResourceNotFoundException);
  });
});

describe('jobs on the data plane', () => {
  it('notifies a subscribed thing, answers get / start-next / update to the asker only, and completes the job', async () => {
    const dev = await vendThing(iot, 'dp-a', { policyName: 'jobs-policy', policyDocument: jobsPolicy() });
    const { client, got } = await connect(dev);
    await client.subscribeAsync(['$aws/things/dp-a/jobs/notify', '$aws/things/dp-a/jobs/notify-next'], { qos: 1 });

    await iot.send(new CreateJobCommand({ jobId: 'fw-1', targets: [arn('dp-a')], document: '{"firmware":"2.0"}' }));
    await until(() => got.some((m) => m.topic.endsWith('/notify-next')));
    expect(got.find((m) => m.topic.endsWith('/notify'))!.body.jobs).toMatchObject({ QUEUED: [{ jobId: 'fw-1', versionNumber: 1 }] });
    expect(got.find((m) => m.topic.endsWith('/notify-next'))!.body.execution).toMatchObject({ jobId: 'fw-1', status: 'QUEUED', jobDocument: { firmware: '2.0' } });

    // No subscription to the answer topics: IoT Core hands them to the asker anyway.
    got.length = 0;
    await client.publishAsync('$aws/things/dp-a/jobs/get', JSON.stringify({ clientToken: 'c1' }), { qos: 1 });
    await until(() => got.some((m) => m.topic === '$aws/things/dp-a/jobs/get/accepted'));
    expect(got.find((m) => m.topic.endsWith('/get/accepted'))!.body).toMatchObject({ clientToken: 'c1', inProgressJobs: [], queuedJobs: [{ jobId: 'fw-1' }] });

    await client.publishAsync('$aws/things/dp-a/jobs/start-next', '{}', { qos: 1 });
    await until(() => got.some((m) => m.topic.endsWith('/start-next/accepted')));
    const started = got.find((m) => m.topic.endsWith('/start-next/accepted'))!.body.execution as Record<string, unknown>;
    expect(started).toMatchObject({ jobId: 'fw-1', status: 'IN_PROGRESS', versionNumber: 2, jobDocument: { firmware: '2.0' } });

    // A stale expected version is refused with the current state.
    await client.publishAsync('$aws/things/dp-a/jobs/fw-1/update', JSON.stringify({ status: 'SUCCEEDED', expectedVersion: 1 }), { qos: 1 });
    await until(() => got.some((m) => m.topic.endsWith('/fw-1/update/rejected')));
    expect(got.find((m) => m.topic.endsWith('/update/rejected'))!.body).toMatchObject({ code: 'VersionMismatch', executionState: { status: 'IN_PROGRESS', versionNumber: 2 } });

    await client.publishAsync('$aws/things/dp-a/jobs/fw-1/update', JSON.stringify({ status: 'SUCCEEDED', expectedVersion: 2, statusDetails: { version: '2.0' }, includeJobExecutionState: true }), { qos: 1 });
    await until(() => got.some((m) => m.topic.endsWith('/fw-1/update/accepted')));
    expect(got.find((m) => m.topic.endsWith('/update/accepted'))!.body.executionState).toEqual({ status: 'SUCCEEDED', statusDetails: { version: '2.0' }, versionNumber: 3 });
    // The pending list emptied: notify with no jobs, notify-next without an execution.
    await until(() => got.filter((m) => m.topic.endsWith('/notify-next')).length >= 1 && got.some((m) => m.topic.endsWith('/notify')));
    expect(got.filter((m) => m.topic.endsWith('/notify-next')).at(-1)!.body.execution).toBeUndefined();

    const { execution } = await iot.send(new DescribeJobExecutionCommand({ jobId: 'fw-1', thingName: 'dp-a' }));
    expect(execution).toMatchObject({ status: 'SUCCEEDED', statusDetails: { detailsMap: { version: '2.0' } }, versionNumber: 3 });
    expect((await iot.send(new DescribeJobCommand({ jobId: 'fw-1' }))).job!.status).toBe('COMPLETED');

    // A finished execution cannot move again; an unknown one is not found.
    got.length = 0;
    await client.publishAsync('$aws/things/dp-a/jobs/fw-1/update', JSON.stringify({ status: 'IN_PROGRESS' }), { qos: 1 });
    await client.publishAsync('$aws/things/dp-a/jobs/nope/update', JSON.stringify({ status: 'IN_PROGRESS' }), { qos: 1 });
    await client.publishAsync('$aws/things/dp-a/jobs/fw-1/update', 'not json', { qos: 1 });
    await until(() => got.filter((m) => m.topic.endsWith('/update/rejected')).length >= 3);
    expect(got.filter((m) => m.topic.endsWith('/update/rejected')).map((m) => m.body.code)).toEqual(['InvalidStateTransition', 'ResourceNotFound', 'InvalidJson']);
  });

  it('keeps another thing\'s answers and notifications away, and closes a device publishing on a notify topic', async () => {
    const a = await connect(await vendThing(iot, 'iso-a', { policyName: 'jobs-policy', policyDocument: jobsPolicy() }));
    const b = await connect(await vendThing(iot, 'iso-b', { policyName: 'jobs-policy', policyDocument: jobsPolicy() }));
    await b.client.subscribeAsync('$aws/things/iso-b/jobs/#', { qos: 1 });
    await a.client.subscribeAsync('$aws/things/iso-a/jobs/#', { qos: 1 });
    await iot.send(new CreateJobCommand({ jobId: 'iso-1', targets: [arn('iso-a')], document: '{}' }));
    await a.client.publishAsync('$aws/things/iso-a/jobs/get', '{}', { qos: 1 });
    await until(() => a.got.some((m) => m.topic.endsWith('/get/accepted')));
    await new Promise((r) => setTimeout(r, 200));
    expect(b.got).toEqual([]);
    // The answer comes once, and the request itself goes to the Jobs service only.
    expect(a.got.filter((m) => m.topic.startsWith('$aws/things/iso-a/jobs/get')).map((m) => m.topic)).toEqual(['$aws/things/iso-a/jobs/get/accepted']);
    const closed = new Promise<void>((resolve) => a.client.once('close', () => resolve()));
    a.client.publish('$aws/things/iso-a/jobs/notify', '{}', { qos: 1 });
    await closed;
  });
});

describe('Basic Ingest on the data plane', () => {
  it('accepts a publish under $aws/rules/{rule}/ with 8 levels after it, shows it to the observer, and refuses to subscribe to it', async () => {
    const dev = await vendThing(iot, 'bi-a', { policyName: 'jobs-policy', policyDocument: jobsPolicy() });
    const observer = await mqtt.connectAsync({ host: '127.0.0.1', port: sb.observerPort, protocolVersion: 4, reconnectPeriod: 0 });
    clients.push(observer);
    const seen: string[] = [];
    observer.on('message', (topic) => seen.push(topic));
    await observer.subscribeAsync('$aws/rules/#', { qos: 1 });
    const { client } = await connect(dev);
    const topic = '$aws/rules/ingest/things/bi-a/3/4/5/6/7/8';
    await client.publishAsync(topic, 'reading', { qos: 1 });
    await until(() => seen.includes(topic));
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.subscribe('$aws/rules/ingest/things/bi-a/#', { qos: 1 });
    await closed;
  });
});
