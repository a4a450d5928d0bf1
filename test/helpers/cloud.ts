import mqtt, { type MqttClient } from 'mqtt';
import { readFileSync } from 'node:fs';
import { sandboxIotClient, vendThing } from '../../sandbox/testkit.ts';
import type { SandboxProcess } from './processes.ts';

/**
 * The cloud side of a test: an application connected to the sandbox data plane with its own certificate
 * and a policy allowing everything, used to send commands down to devices.
 */
export async function connectCloudApp(sandbox: SandboxProcess, name = 'cloud-app'): Promise<MqttClient> {
  const iot = sandboxIotClient(sandbox.controlEndpoint);
  const doc = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'iot:*', Resource: '*' }] });
  const app = await vendThing(iot, name, { policyName: `${name}-policy`, policyDocument: doc });
  return mqtt.connectAsync(`mqtts://localhost:${sandbox.dataPort}`, {
    clientId: name,
    ca: readFileSync(sandbox.caFile),
    cert: app.certPem,
    key: app.keyPem,
    reconnectPeriod: 0,
  });
}
