import { CreateJobCommand, ResourceNotFoundException, type IoTClient } from '@aws-sdk/client-iot';
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

/** The ARN of a SIM's thing in the sandbox's account and region. */
export const simThingArn = (imsi: string) => `arn:aws:iot:us-east-1:123456789012:thing/sim-${imsi}`;

/** CreateJob once every target's thing exists (each is vended on its SIM's first request). */
export async function createJobWhenVended(iot: IoTClient, jobId: string, imsis: string[], document: unknown): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await iot.send(new CreateJobCommand({ jobId, targets: imsis.map(simThingArn), document: JSON.stringify(document) }));
      return;
    } catch (err) {
      if (!(err instanceof ResourceNotFoundException) || i > 240) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}
