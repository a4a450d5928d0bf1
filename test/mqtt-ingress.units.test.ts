import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import mqtt from 'mqtt';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { Admission, AdmittedDevice } from '../bridge/admission.ts';
import type { Connectivity } from '../bridge/connectivity.ts';
import type { Downlink } from '../bridge/downlink.ts';
import type { IdentitySource } from '../bridge/identity/source.ts';
import { startMqttIngress, type MqttIngress, type MqttIngressOptions } from '../bridge/ingress/mqtt.ts';
import { createMetrics } from '../bridge/metrics.ts';
import type { Uplink } from '../bridge/uplink.ts';
import type { AuditStore } from '../storage/audit.ts';
import { connectDevice, deviceOptions } from './helpers/mqtt.ts';

// The device MQTT ingress over real sockets, with small fakes for what stands behind it (admission lets
// every device in, uplink takes every message): what is checked here is the ingress's own work.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function fakes(overrides: Partial<MqttIngressOptions> = {}): MqttIngressOptions {
  const device = { sim: { imsi: '001010000000001', thingName: 'sim-001010000000001', group: 'default' }, source: 'claimed' } as unknown as AdmittedDevice;
  return {
    host: '127.0.0.1',
    port: 0,
    connectTimeoutMs: 5000,
    maxClientIdBytes: 128,
    maxConnectionsPerAddress: 1000,
    maxConnectionsPerSim: 1000,
    maxKeepAliveSeconds: 1200,
    keepAliveZero: 'limit',
    identity: { name: 'claimed', identify: () => ({ imsi: device.sim.imsi, source: 'claimed' }) } as IdentitySource,
    admission: { admit: async () => device } as unknown as Admission,
    uplink: { accept: async () => 1 } as unknown as Uplink,
    downlink: { subscribe: async () => 0, unsubscribe: async () => undefined } as unknown as Downlink,
    connectivity: { report: () => undefined } as unknown as Connectivity,
    metrics: createMetrics(),
    audit: { record: async () => undefined } as unknown as AuditStore,
    log: pino({ level: 'silent' }),
    ...overrides,
  };
}

describe('device MQTT ingress', () => {
  let ingress: MqttIngress | undefined;
  afterEach(async () => {
    await ingress?.close();
    ingress = undefined;
  });

  it('keeps nothing retained in the local broker: 300 retained publishes of 100 KB leave no memory behind', async () => {
    ingress = await startMqttIngress(fakes());
    const url = `mqtt://127.0.0.1:${ingress.port}`;
    gc();
    const before = process.memoryUsage().arrayBuffers;
    for (let i = 0; i < 300; i++) {
      // Each on its own connection: the refusal closes it, as any refused publish does in MQTT 3.1.1.
      const client = await mqtt.connectAsync(url, deviceOptions('001010000000001', '490154203237518'));
      await new Promise<void>((resolve) => {
        client.once('close', () => resolve());
        client.publish(`state/${i}`, Buffer.alloc(100_000, i % 256), { qos: 1, retain: true }, () => resolve());
      });
      client.end(true);
    }
    // Closed sockets release their buffers over a few turns of the loop: let them, then collect twice.
    await new Promise((r) => setTimeout(r, 500));
    gc();
    await new Promise((r) => setTimeout(r, 100));
    gc();
    const grownMb = (process.memoryUsage().arrayBuffers - before) / 1024 ** 2;
    // Kept, they would hold 30 MB (the old ingress kept 29 MB). The bound leaves room for socket buffers
    // not yet released when other test files share the machine (9 MB seen under load), not for the leak.
    expect(grownMb).toBeLessThan(15);
  }, 60_000);

  it('refuses keepalive 0 with CONNACK 5 when so configured, and takes a bounded keepalive', async () => {
    ingress = await startMqttIngress(fakes({ keepAliveZero: 'refuse' }));
    const url = `mqtt://127.0.0.1:${ingress.port}`;
    expect((await connectDevice(url, deviceOptions('001010000000001', '490154203237518', { keepalive: 0 }))).code).toBe(5);
    const ok = await connectDevice(url, deviceOptions('001010000000001', '490154203237518', { keepalive: 60 }));
    expect(ok.code).toBe(0);
    ok.client.end(true);
  });

  it('reads a 3.1.1 device no further while receiveMaximum of its QoS 1 publishes wait for their commit', async () => {
    const waiting: Array<() => void> = [];
    let accepted = 0;
    const uplink = { accept: () => new Promise<number>((resolve) => (accepted++, waiting.push(() => resolve(1)))) } as unknown as Uplink;
    ingress = await startMqttIngress(fakes({ uplink, receiveMaximum: 3 }));
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${ingress.port}`, deviceOptions('001010000000001', '490154203237518'));
    const acked: Promise<unknown>[] = [];
    for (let i = 0; i < 8; i++) {
      acked.push(client.publishAsync('t', String(i), { qos: 1 }));
      await new Promise((r) => setTimeout(r, 30)); // one publish per TCP segment
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(accepted).toBe(3);
    // Commits release the device: every publish is read and acknowledged in the end.
    for (let round = 0; round < 20 && accepted < 8; round++) {
      waiting.splice(0).forEach((release) => release());
      await new Promise((r) => setTimeout(r, 100));
    }
    waiting.splice(0).forEach((release) => release());
    await Promise.all(acked);
    expect(accepted).toBe(8);
    client.end(true);
  });
});
