// A job created with @aws-sdk/client-iot against the sandbox reaches an MQTT device behind simbridge
// through notify-next on the device's own upstream session; the device starts and completes it.
import { CreateJobCommand, DescribeJobExecutionCommand, type IoTClient } from '@aws-sdk/client-iot';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { deviceOptions, subscribeCodes } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const IMSI = '001010000000801';
const IMEI = '490154203237518';
const THING = `sim-${IMSI}`;
const JOBS = `$aws/things/${THING}/jobs`;

async function until(cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('Jobs for an MQTT device', () => {
  const dir = tempDir('jobs-mqtt');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let iot: IoTClient;
  const devices: MqttClient[] = [];

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    // A window group: Jobs requests must still go at once, not wait in a batch.
    gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { groups: { default: { batching: { policy: 'window', maxDelayMs: 600_000 } } } })).file);
    iot = sandboxIotClient(sandbox.controlEndpoint);
  });

  afterAll(async () => {
    for (const d of devices) d.end(true);
    iot?.destroy();
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('gets notify-next, starts and completes the job on its own session; DescribeJobExecution shows SUCCEEDED', async () => {
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(IMSI, IMEI));
    devices.push(device);
    const got: { topic: string; body: Record<string, unknown> }[] = [];
    device.on('message', (topic, payload) => got.push({ topic, body: JSON.parse(payload.toString()) }));
    // The first subscription vends the device's thing; the job can target it once that is done.
    const granted = await device.subscribeAsync([`${JOBS}/notify-next`, `${JOBS}/start-next/accepted`, `${JOBS}/+/update/accepted`, `${JOBS}/+/update/rejected`], { qos: 1 });
    expect(granted.map((g) => g.qos)).toEqual([1, 1, 1, 1]);

    await iot.send(new CreateJobCommand({ jobId: 'fw-2-0', targets: [`arn:aws:iot:us-east-1:123456789012:thing/${THING}`], document: JSON.stringify({ firmware: '2.0' }) }));
    await until(() => got.some((m) => m.topic === `${JOBS}/notify-next`));
    expect(got.find((m) => m.topic === `${JOBS}/notify-next`)!.body.execution).toMatchObject({ jobId: 'fw-2-0', status: 'QUEUED', jobDocument: { firmware: '2.0' } });

    await device.publishAsync(`${JOBS}/start-next`, JSON.stringify({ clientToken: 'dev-1' }), { qos: 1 });
    await until(() => got.some((m) => m.topic === `${JOBS}/start-next/accepted`));
    const started = got.find((m) => m.topic === `${JOBS}/start-next/accepted`)!.body;
    expect(started).toMatchObject({ clientToken: 'dev-1', execution: { jobId: 'fw-2-0', status: 'IN_PROGRESS', versionNumber: 2 } });

    await device.publishAsync(`${JOBS}/fw-2-0/update`, JSON.stringify({ status: 'SUCCEEDED', expectedVersion: 2, statusDetails: { installed: '2.0' } }), { qos: 1 });
    await until(() => got.some((m) => m.topic === `${JOBS}/fw-2-0/update/accepted`));
    const { execution } = await iot.send(new DescribeJobExecutionCommand({ jobId: 'fw-2-0', thingName: THING }));
    expect(execution).toMatchObject({ status: 'SUCCEEDED', statusDetails: { detailsMap: { installed: '2.0' } } });
    expect(got.some((m) => m.topic.endsWith('/update/rejected'))).toBe(false);
  });

  it('refuses another thing\'s Jobs topics and publishes to its own notify topics', async () => {
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(IMSI, IMEI));
    devices.push(device);
    expect(await subscribeCodes(device, ['$aws/things/sim-001010000000802/jobs/notify-next', '$aws/things/+/jobs/notify', `${JOBS}/notify`], 1)).toEqual([128, 128, 1]);
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    device.publish('$aws/things/sim-001010000000802/jobs/get', '{}', { qos: 1 });
    await closed;

    const again = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(IMSI, IMEI));
    devices.push(again);
    const closedToo = new Promise<void>((resolve) => again.once('close', () => resolve()));
    again.publish(`${JOBS}/notify`, '{}', { qos: 1 });
    await closedToo;
  });
});
