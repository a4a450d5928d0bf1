import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { GetPolicyCommand } from '@aws-sdk/client-iot';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeBatch } from '../docs/examples/decode-batch.mjs';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { deviceOptions, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const IMEI = '490154203237518';
const RULE = 'fleet_ingest';

function post(port: number, imsi: string, topic: string, body: string) {
  return fetch(`http://127.0.0.1:${port}/topics/${topic}?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': IMEI }, body });
}

describe('Basic Ingest per group', () => {
  const dir = tempDir('basic-ingest');
  let sandbox: SandboxProcess;
  let observer: Observer;
  const gateways: GatewayProcess[] = [];

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    // Nothing can subscribe to $aws/rules on IoT Core: the sandbox's observer shows them (`#` skips `$` topics).
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`, '$aws/rules/#');
  });

  afterAll(async () => {
    await observer?.close();
    for (const g of gateways) await g.kill();
    await sandbox?.process.kill();
  });

  it('sends uplink to $aws/rules/{rule}/<topic> with 8 device levels; a 9th is refused; the policy allows only that rule', async () => {
    const gateway = await startGatewayProcess((await gatewayConfig(sub(dir, 'immediate'), sandbox, { groups: { default: { basicIngest: { rule: RULE } } } })).file);
    gateways.push(gateway);
    const imsi = '001010000000701';
    // devices/{thing}/ + 6 levels = 8 levels upstream; the $aws/rules/fleet_ingest/ prefix is not counted.
    const deep = 'a/b/c/d/e/f';
    expect((await post(gateway.httpPort, imsi, deep, 'over http')).status).toBe(202);
    const tooDeep = await post(gateway.httpPort, imsi, `${deep}/g`, 'nine levels');
    expect(tooDeep.status).toBe(400);
    expect(((await tooDeep.json()) as { error: string }).error).toBe('topic_too_deep');

    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(imsi, IMEI));
    await device.publishAsync(deep, 'over mqtt', { qos: 1 });
    await device.endAsync();

    const upstream = `$aws/rules/${RULE}/devices/sim-${imsi}/${deep}`;
    await observer.waitUntil((m) => m.filter((x) => x.topic === upstream).length >= 2);
    expect(observer.messages.filter((x) => x.topic === upstream).map((x) => x.payload.toString()).sort()).toEqual(['over http', 'over mqtt']);
    expect(observer.messages.some((x) => x.payload.toString() === 'nine levels')).toBe(false);

    // The policy the gateway vended publishes under that rule's prefix only, and still receives its own topics.
    const iot = sandboxIotClient(sandbox.controlEndpoint);
    const policy = await iot.send(new GetPolicyCommand({ policyName: 'simbridge-default' }));
    const statements = JSON.parse(policy.policyDocument!).Statement as { Action: string | string[]; Resource: string | string[] }[];
    const publish = statements.find((s) => s.Action === 'iot:Publish')!.Resource as string[];
    const topics = publish.map((r) => r.split(':topic/')[1]);
    expect(topics.filter((t) => !t.startsWith('$aws/things/'))).toEqual([
      `$aws/rules/${RULE}/devices/\${iot:Connection.Thing.ThingName}/*`,
      `$aws/rules/${RULE}/devices/\${iot:Connection.Thing.ThingName}/batch`,
    ]);
    expect(statements.find((s) => s.Action === 'iot:Receive')!.Resource).toContain(
      'arn:aws:iot:us-east-1:123456789012:topic/devices/${iot:Connection.Thing.ThingName}/*',
    );
    iot.destroy();
  });

  it('sends the group\'s batches under the rule\'s prefix too', async () => {
    const gateway = await startGatewayProcess(
      (
        await gatewayConfig(sub(dir, 'batched'), sandbox, {
          vending: { policyName: 'simbridge-batched-{group}' },
          groups: { default: { basicIngest: { rule: RULE }, bindClaimedImei: true, batching: { policy: 'window', maxMessages: 3, maxDelayMs: 1000 } } },
        })
      ).file,
    );
    gateways.push(gateway);
    const imsi = '001010000000702';
    const sent = ['r0', 'r1', 'r2'];
    for (const body of sent) expect((await post(gateway.httpPort, imsi, 'meter', body)).status).toBe(202);
    const topic = `$aws/rules/${RULE}/devices/sim-${imsi}/batch`;
    await observer.waitUntil((m) => m.some((x) => x.topic === topic));
    const batch = decodeBatch(observer.messages.find((x) => x.topic === topic)!.payload);
    expect(batch.map((r) => String(r.payload))).toEqual(sent);
  });
});

function sub(dir: string, name: string): string {
  const path = join(dir, name);
  mkdirSync(path, { recursive: true });
  return path;
}
