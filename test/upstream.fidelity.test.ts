// simbridge against a sandbox that behaves as IoT Core documents (docs/fidelity.md): each test here
// failed against the gateway before it learned to cope with that behaviour.
import { join } from 'node:path';
import { AttachPolicyCommand, CreatePolicyCommand, GetPolicyCommand, ListPolicyVersionsCommand, UpdateCertificateCommand } from '@aws-sdk/client-iot';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { connectCloudApp } from './helpers/cloud.ts';
import { deviceOptions, Observer, subscribeCodes } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type SandboxProcess } from './helpers/processes.ts';
import { gatewayState } from './helpers/storage-mode.ts';

const IMEI = '490154203237518';
const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

interface SandboxState {
  certificates: Array<{ certificateId: string; certificateArn: string; status: string; things: string[]; policies: string[] }>;
  connections: Array<{ clientId: string; certificateId: string }>;
}

async function sandboxState(sandbox: SandboxProcess): Promise<SandboxState> {
  return (await (await fetch(`${sandbox.controlEndpoint}/_sandbox/state`)).json()) as SandboxState;
}

function nextMessage(client: MqttClient, timeoutMs = 10_000): Promise<{ topic: string; payload: Buffer }> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no message')), timeoutMs);
    client.once('message', (topic, payload) => {
      clearTimeout(t);
      resolve({ topic, payload: Buffer.from(payload) });
    });
  });
}

function gatewayDb(dir: string) {
  return gatewayState(join(dir, 'gateway'));
}

describe('a refused SUBSCRIBE closes the connection on IoT Core', () => {
  it('drops only the refused filter, answers the device 0x80 and audits it; uplink and the other subscription carry on', async () => {
    const dir = tempDir('fidelity-sub');
    const sandbox = await startSandboxProcess(dir);
    cleanups.push(() => sandbox.process.kill());
    const gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { groups: { default: { lock: 'any' } }, upstream: { minConnectIntervalMs: 100, maxDeliveryAttempts: 1, propagationGraceMs: 0 } })).file);
    cleanups.push(() => gateway.kill());
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close());
    const cloud = await connectCloudApp(sandbox);
    cleanups.push(() => cloud.endAsync());

    const imsi = '001010000000901';
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(imsi, IMEI));
    cleanups.push(() => device.endAsync());
    expect(await subscribeCodes(device, ['commands/#'], 1)).toEqual([1]);
    await device.publishAsync('telemetry', 'vended', { qos: 1 });
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'vended'));

    // An operator guards secret topics with a policy of their own: the gateway cannot know it.
    const iot = sandboxIotClient(sandbox.controlEndpoint);
    const deny = JSON.stringify({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Deny', Action: 'iot:Subscribe', Resource: 'arn:aws:iot:us-east-1:123456789012:topicfilter/devices/*/secret/*' }],
    });
    await iot.send(new CreatePolicyCommand({ policyName: 'operator-guard', policyDocument: deny }));
    const cert = (await sandboxState(sandbox)).certificates.find((c) => c.things.includes(`sim-${imsi}`))!;
    await iot.send(new AttachPolicyCommand({ policyName: 'operator-guard', target: cert.certificateArn }));

    // Readings in flight while IoT Core closes the session to refuse the filter.
    const sent = Array.from({ length: 20 }, (_, i) => device.publishAsync('telemetry', `reading-${i}`, { qos: 1 }));
    expect(await subscribeCodes(device, ['secret/#'], 1)).toEqual([128]);
    await Promise.all(sent);
    for (let i = 20; i < 30; i++) await device.publishAsync('telemetry', `reading-${i}`, { qos: 1 });
    await observer.waitUntil((m) => Array.from({ length: 30 }, (_, i) => `reading-${i}`).every((p) => m.some((x) => x.payload.toString() === p)), 30_000);

    // The session is up again without the refused filter, and the other subscription still delivers.
    const got = nextMessage(device);
    await new Promise((r) => setTimeout(r, 500));
    await cloud.publishAsync(`devices/sim-${imsi}/commands/reboot`, 'now', { qos: 1 });
    expect((await got).payload.toString()).toBe('now');
    const state = await sandboxState(sandbox);
    expect(state.connections.filter((c) => c.clientId === `sim-${imsi}`)).toHaveLength(1);

    // A filter IoT Core accepted once and refuses after a reconnect (the policy changed meanwhile): the
    // resubscribe drops the session, so the filter goes and the session comes back without it.
    expect(await subscribeCodes(device, ['alerts/#'], 1)).toEqual([1]);
    const denyAlerts = deny.replace('/secret/', '/alerts/');
    await iot.send(new CreatePolicyCommand({ policyName: 'operator-guard-2', policyDocument: denyAlerts }));
    await iot.send(new AttachPolicyCommand({ policyName: 'operator-guard-2', target: cert.certificateArn }));
    await iot.send(new UpdateCertificateCommand({ certificateId: cert.certificateId, newStatus: 'INACTIVE' }));
    await iot.send(new UpdateCertificateCommand({ certificateId: cert.certificateId, newStatus: 'ACTIVE' }));
    iot.destroy();
    for (let i = 30; i < 40; i++) await device.publishAsync('telemetry', `reading-${i}`, { qos: 1 });
    await observer.waitUntil((m) => Array.from({ length: 10 }, (_, i) => `reading-${30 + i}`).every((p) => m.some((x) => x.payload.toString() === p)), 30_000);
    const again = nextMessage(device);
    await cloud.publishAsync(`devices/sim-${imsi}/commands/reboot`, 'again', { qos: 1 });
    expect((await again).payload.toString()).toBe('again');

    const db = await gatewayDb(dir);
    const dead = await db.get('SELECT COUNT(*) AS n FROM dead_letters');
    const refused = (await db.all<{ detail: string }>("SELECT detail FROM audit WHERE imsi = ? AND kind = 'subscription_refused'", imsi)).map((r) => r.detail);
    await db.close();
    expect(dead).toEqual({ n: 0 });
    expect(refused).toHaveLength(2);
    expect(refused[0]).toContain(`devices/sim-${imsi}/secret/#`);
    expect(refused[1]).toContain(`devices/sim-${imsi}/alerts/#`);
  }, 120_000);
});

describe('publishes above 100/s per connection are dropped without PUBACK', () => {
  it('drains a backlog of one device within the quota: every message arrives, none fails upstream', async () => {
    const T0 = Date.now();
    const dir = tempDir('fidelity-rate');
    const sandbox = await startSandboxProcess(dir);
    cleanups.push(() => sandbox.process.kill());
    // A short operation timeout, so a publish IoT Core dropped shows up as a failure within the test (not
    // shorter: a sandbox on a busy machine may take seconds to answer a publish it did not drop).
    const cfg = await gatewayConfig(dir, sandbox, { groups: { default: { lock: 'any' } }, upstream: { operationTimeoutMs: 4000 }, storage: { synchronous: 'normal' } });
    const gateway = await startGatewayProcess(cfg.file);
    cleanups.push(() => gateway.kill());
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close());

    // The backlog builds while the SIM is vended, then drains at once.
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions('001010000000902', IMEI));
    cleanups.push(() => device.endAsync());
    await Promise.all(Array.from({ length: 400 }, (_, i) => device.publishAsync('telemetry', `m${i}`, { qos: 1 })));
    const started = Date.now();
    await observer.waitUntil((m) => m.length >= 400, 30_000);
    const seen = new Set(observer.messages.map((m) => m.payload.toString()));
    expect(seen.size).toBe(400);
    expect(gateway.output).not.toMatch(/upstream delivery failed/);
    // Within the quota, but not far below it: 400 messages at 85/s after a burst of 5.
    expect(Date.now() - started).toBeLessThan(8000);
  }, 60_000);
});

describe('changes take time to propagate on IoT Core', () => {
  it('does not count refusals while a new policy version propagates: the message waits, then goes through', async () => {
    const dir = tempDir('fidelity-propagation');
    const sandbox = await startSandboxProcess(dir, undefined, { sandbox: { propagation: { policyVersionsMs: 5000 } } });
    cleanups.push(() => sandbox.process.kill());
    // The group's policy exists from before its topic template changed: only devices/<thing>/old/* may publish.
    const arn = 'arn:aws:iot:us-east-1:123456789012';
    const old = JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: 'iot:Connect', Resource: `${arn}:client/\${iot:Connection.Thing.ThingName}` },
        { Effect: 'Allow', Action: 'iot:Publish', Resource: `${arn}:topic/devices/\${iot:Connection.Thing.ThingName}/old/*` },
      ],
    });
    const iot = sandboxIotClient(sandbox.controlEndpoint);
    await iot.send(new CreatePolicyCommand({ policyName: 'simbridge-default', policyDocument: old }));
    iot.destroy();
    const gateway = await startGatewayProcess(
      (await gatewayConfig(dir, sandbox, { groups: { default: { lock: 'any' } }, upstream: { maxDeliveryAttempts: 1, minConnectIntervalMs: 100 } })).file,
    );
    cleanups.push(() => gateway.kill());
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close());

    const imsi = '001010000000903';
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/topics/data/1?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': IMEI }, body: 'after-propagation' });
    expect(res.status).toBe(202);
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'after-propagation'), 45_000);
    const db = await gatewayDb(dir);
    const dead = await db.get('SELECT COUNT(*) AS n FROM dead_letters');
    await db.close();
    expect(dead).toEqual({ n: 0 });
    // It was refused at first (the old version was still in force), so the grace is what kept it.
    expect(gateway.output).toMatch(/policy updated to a new default version/);
    expect(gateway.output).toMatch(/upstream delivery failed/);
  }, 90_000);
});

describe('policies have a life cycle', () => {
  it('brings a group policy up to date at start and on reload when its topic template changed, with no new device', async () => {
    const dir = tempDir('fidelity-policy-sync');
    const sandbox = await startSandboxProcess(dir);
    cleanups.push(() => sandbox.process.kill());
    const withTemplate = (upstreamTopic: string) => gatewayConfig(dir, sandbox, { groups: { default: { lock: 'any', upstreamTopic } } });
    const { file } = await withTemplate('devices/{thing}/{topic}');
    let gateway = await startGatewayProcess(file);
    cleanups.push(() => gateway.kill());
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/topics/data?qos=1`, { method: 'POST', headers: { 'x-imsi': '001010000000905', 'x-imei': IMEI }, body: 'vend' });
    expect(res.status).toBe(202);

    const iot = sandboxIotClient(sandbox.controlEndpoint);
    cleanups.push(async () => iot.destroy());
    const policyName = 'simbridge-default';
    const defaultPolicy = async () => iot.send(new GetPolicyCommand({ policyName })).catch(() => undefined);
    const until = async (cond: (p: NonNullable<Awaited<ReturnType<typeof defaultPolicy>>>) => boolean, what: string) => {
      for (const end = Date.now() + 30_000; ; ) {
        const p = await defaultPolicy();
        if (p && cond(p)) return p;
        if (Date.now() > end) throw new Error(`policy never ${what}: ${JSON.stringify(p)}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    const first = await until(() => true, 'created by the first vend');
    expect(first.policyDocument).toContain(':topic/devices/');
    const certificates = (await sandboxState(sandbox)).certificates.length;
    expect(certificates).toBe(1);

    // A reload (the file changes) with another template: a new default version, without a new device.
    await withTemplate('fleet/{thing}/{topic}');
    const reloaded = await until((p) => p.defaultVersionId !== first.defaultVersionId, 'updated on reload');
    expect(reloaded.policyDocument).toContain(':topic/fleet/');

    // Changed while the gateway was down: brought up to date at start.
    await gateway.kill();
    await withTemplate('site/{thing}/{topic}');
    gateway = await startGatewayProcess(file);
    cleanups.push(() => gateway.kill());
    const restarted = await until((p) => p.defaultVersionId !== reloaded.defaultVersionId, 'updated at start');
    expect(restarted.policyDocument).toContain(':topic/site/');
    const versions = await iot.send(new ListPolicyVersionsCommand({ policyName }));
    expect(versions.policyVersions?.filter((v) => v.isDefaultVersion).map((v) => v.versionId)).toEqual([restarted.defaultVersionId]);
    expect((await sandboxState(sandbox)).certificates.length).toBe(certificates);
    expect(gateway.output).toMatch(/policy updated to a new default version/);
  }, 120_000);
});

describe('the shadow service answers on /accepted, /rejected and /delta', () => {
  it('audits a connectivity report the shadow service rejects (the document would exceed 8 KB)', async () => {
    const dir = tempDir('fidelity-shadow');
    const sandbox = await startSandboxProcess(dir);
    cleanups.push(() => sandbox.process.kill());
    const gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { groups: { default: { lock: 'any', connectivity: true } } })).file);
    cleanups.push(() => gateway.kill());
    const imsi = '001010000000904';
    // The cloud side already keeps nearly 8 KB in the thing's shadow.
    const cloud = await connectCloudApp(sandbox, 'shadow-cloud');
    cleanups.push(() => cloud.endAsync());
    const accepted = nextMessage(cloud);
    await cloud.subscribeAsync(`$aws/things/sim-${imsi}/shadow/update/accepted`, { qos: 1 });
    await cloud.publishAsync(`$aws/things/sim-${imsi}/shadow/update`, JSON.stringify({ state: { reported: { notes: 'x'.repeat(8150) } } }), { qos: 1 });
    await accepted;

    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(imsi, IMEI));
    cleanups.push(() => device.endAsync());
    const deadline = Date.now() + 45_000;
    let rejected: string[] = [];
    while (rejected.length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      const db = await gatewayDb(dir);
      rejected = (await db.all<{ detail: string }>("SELECT detail FROM audit WHERE imsi = ? AND kind = 'shadow_update_rejected'", imsi)).map((r) => r.detail);
      await db.close();
    }
    expect(rejected).toHaveLength(1);
    expect(JSON.parse(rejected[0]!)).toMatchObject({ code: 413 });
  }, 90_000);
});
