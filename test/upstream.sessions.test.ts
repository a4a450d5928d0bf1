import { join } from 'node:path';
import { AttachPolicyCommand, CreatePolicyCommand } from '@aws-sdk/client-iot';
import mqtt from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { connectCloudApp } from './helpers/cloud.ts';
import { deviceOptions, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type SandboxProcess } from './helpers/processes.ts';
import { gatewayState } from './helpers/storage-mode.ts';

const IMEI = '490154203237518';

async function sandboxConnections(sandbox: SandboxProcess): Promise<string[]> {
  const res = await fetch(`${sandbox.controlEndpoint}/_sandbox/state`);
  const state = (await res.json()) as { connections: Array<{ clientId: string }> };
  return state.connections.map((c) => c.clientId).sort();
}

async function post(port: number, imsi: string, topic: string, body: string): Promise<void> {
  const res = await fetch(`http://127.0.0.1:${port}/topics/${topic}?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': IMEI }, body });
  expect(res.status).toBe(202);
}

describe('upstream sessions', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });

  it('caps warm sessions, evicting the least recently used idle one first but not one holding subscriptions; idle ones close', async () => {
    const dir = tempDir('sessions-cap');
    const sandbox = await startSandboxProcess(dir);
    const gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { upstream: { maxSessions: 3, idleTimeoutMs: 3000 } })).file);
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close(), () => gateway.kill(), () => sandbox.process.kill());

    // d0 holds a subscription (a device waiting for commands).
    const d0 = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions('001010000000600', IMEI));
    await d0.subscribeAsync('commands/#', { qos: 1 });
    cleanups.push(() => d0.endAsync());
    const imsis = ['001010000000601', '001010000000602', '001010000000603', '001010000000604'];
    for (const imsi of imsis) {
      await post(gateway.httpPort, imsi, 'm', `hello-${imsi}`);
      await observer.waitUntil((m) => m.some((x) => x.payload.toString() === `hello-${imsi}`));
    }
    // Three sessions at most: d0 (subscribed) and the two most recently used.
    expect(await sandboxConnections(sandbox)).toEqual(['sim-001010000000600', 'sim-001010000000603', 'sim-001010000000604']);
    // Idle sessions without subscriptions close by themselves.
    await new Promise((r) => setTimeout(r, 5000));
    expect(await sandboxConnections(sandbox)).toEqual(['sim-001010000000600']);
  });

  it('with the aws-crt client, spreads sessions over several connection threads: each device publishes as itself, commands come back, and SIGTERM exits cleanly', async () => {
    const dir = tempDir('sessions-threads');
    const sandbox = await startSandboxProcess(dir);
    const gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { upstream: { client: 'aws-crt', threads: 3 } })).file);
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close(), () => sandbox.process.kill());

    const imsis = Array.from({ length: 6 }, (_, i) => `00101000000065${i}`);
    // One device waits for commands: its session is on one of the threads, whichever.
    const d0 = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(imsis[0]!, IMEI));
    cleanups.push(() => d0.endAsync());
    await d0.subscribeAsync('commands/#', { qos: 1 });
    const commands: string[] = [];
    d0.on('message', (topic, payload) => commands.push(`${topic} ${payload.toString()}`));
    for (const imsi of imsis.slice(1)) await post(gateway.httpPort, imsi, 'm', `t-${imsi}`);
    await observer.waitUntil((m) => imsis.slice(1).every((i) => m.some((x) => x.topic === `devices/sim-${i}/m` && x.payload.toString() === `t-${i}`)));
    expect(await sandboxConnections(sandbox)).toEqual(imsis.map((i) => `sim-${i}`));
    const cloud = await connectCloudApp(sandbox);
    cleanups.push(() => cloud.endAsync());
    await cloud.publishAsync(`devices/sim-${imsis[0]}/commands/reboot`, 'now', { qos: 1 });
    await expect.poll(() => commands, { timeout: 10_000 }).toEqual(['commands/reboot now']);
    expect(await gateway.kill('SIGTERM')).toBe(0);
  });

  it('paces CONNECTs account-wide: 15 new devices at 5 connects/s take about 2 s more than 5 would', async () => {
    const dir = tempDir('sessions-pacing');
    const sandbox = await startSandboxProcess(dir);
    const gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { upstream: { connectsPerSecond: 5 } })).file);
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close(), () => gateway.kill(), () => sandbox.process.kill());

    const imsis = Array.from({ length: 15 }, (_, i) => `0010100000007${String(i).padStart(2, '0')}`);
    await Promise.all(imsis.map((imsi) => post(gateway.httpPort, imsi, 'm', `p-${imsi}`)));
    const arrivals = new Map<string, number>();
    await observer.waitUntil((m) => {
      for (const x of m) if (!arrivals.has(x.payload.toString())) arrivals.set(x.payload.toString(), Date.now());
      return imsis.every((i) => arrivals.has(`p-${i}`));
    });
    const times = [...arrivals.values()].sort((a, b) => a - b);
    // A burst of 5, then 10 more at 5/s: ~2 s between the first and the last connect (unpaced: ~50 ms).
    // Vending jitter on a loaded machine can shave the first arrivals' lead, so allow some slack.
    expect(times.at(-1)! - times[0]!).toBeGreaterThanOrEqual(1200);
  });

  it('dead-letters a message IoT Core keeps refusing, and the next one still goes through', async () => {
    const dir = tempDir('sessions-dead');
    const sandbox = await startSandboxProcess(dir);
    const gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { upstream: { maxDeliveryAttempts: 2, minConnectIntervalMs: 100, propagationGraceMs: 0 } })).file);
    const observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`);
    cleanups.push(() => observer.close(), () => gateway.kill(), () => sandbox.process.kill());

    const imsi = '001010000000801';
    await post(gateway.httpPort, imsi, 'ok/1', 'vended');
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'vended'), 30_000);
    // An operator's policy of their own denies one topic: the gateway's group policy cannot know it.
    const iot = sandboxIotClient(sandbox.controlEndpoint);
    const deny = JSON.stringify({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Deny', Action: 'iot:Publish', Resource: 'arn:aws:iot:us-east-1:123456789012:topic/devices/*/denied/*' }],
    });
    await iot.send(new CreatePolicyCommand({ policyName: 'operator-deny', policyDocument: deny }));
    const st = (await (await fetch(`${sandbox.controlEndpoint}/_sandbox/state`)).json()) as { certificates: Array<{ certificateArn: string; things: string[] }> };
    await iot.send(new AttachPolicyCommand({ policyName: 'operator-deny', target: st.certificates.find((c) => c.things.includes(`sim-${imsi}`))!.certificateArn }));
    iot.destroy();

    await post(gateway.httpPort, imsi, 'denied/1', 'refused-for-good');
    await post(gateway.httpPort, imsi, 'ok/2', 'goes-through');
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'goes-through'), 30_000);
    expect(observer.messages.some((x) => x.payload.toString() === 'refused-for-good')).toBe(false);
    const db = await gatewayState(join(dir, 'gateway'));
    const dead = await db.all<{ device_topic: string; payload: Buffer; reason: string }>('SELECT device_topic, payload, reason FROM dead_letters WHERE imsi = ?', imsi);
    const audit = (await db.get<{ n: number }>("SELECT COUNT(*) AS n FROM audit WHERE imsi = ? AND kind = 'dead_letter'", imsi))!.n;
    // A delivered row is deleted with the commit after its PUBACK, which may come after the observer saw it.
    const outboxRows = async () => (await db.get<{ n: number }>('SELECT COUNT(*) AS n FROM outbox'))!.n;
    for (const deadline = Date.now() + 10_000; (await outboxRows()) > 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 50));
    const outbox = await outboxRows();
    await db.close();
    expect(dead).toHaveLength(1);
    expect(dead[0]!.device_topic).toBe('denied/1');
    expect(dead[0]!.payload.toString()).toBe('refused-for-good');
    expect(dead[0]!.reason).toMatch(/refused upstream 2 times/);
    expect(audit).toBe(1);
    expect(outbox).toBe(0);
  });
});
