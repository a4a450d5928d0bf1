import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPeer } from './helpers/interop.ts';
import { startMosquitto, type MosquittoBroker } from './helpers/mosquitto.ts';
import { deviceOptions, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const run = promisify(execFile);
const mosquitto = findPeer('mosquitto', 'mosquitto');
const mosquittoPub = findPeer('mosquitto_pub', 'mosquitto-clients');
const IMSI = '001010000000041';
const IMEI = '490154203237518';

describe.skipIf(!mosquitto || !mosquittoPub)('a real Mosquitto with mutual TLS as the upstream', () => {
  const dir = tempDir('mosquitto');
  let sandbox: SandboxProcess;
  let broker: MosquittoBroker;
  let gateway: GatewayProcess;
  let observer: Observer;

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    broker = await startMosquitto(mosquitto!, dir, { caFile: sandbox.caFile, certFile: sandbox.serverCertFile, keyFile: sandbox.serverKeyFile });
    gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { upstreamPort: broker.tlsPort })).file);
    observer = await Observer.connect(`mqtt://127.0.0.1:${broker.plainPort}`, 'devices/#');
  });

  afterAll(async () => {
    await observer?.close();
    await gateway?.kill();
    await broker?.stop();
    await sandbox?.process.kill();
  });

  it('refuses a TLS client without a certificate (the broker really requires one)', async () => {
    const client = mqtt.connect(`mqtts://localhost:${broker.tlsPort}`, { ca: readFileSync(sandbox.caFile), reconnectPeriod: 0, connectTimeout: 3000 });
    const outcome = await new Promise<string>((resolve) => {
      client.once('connect', () => resolve('connected'));
      client.once('error', () => resolve('refused'));
      client.once('close', () => resolve('refused'));
    });
    client.end(true);
    expect(outcome).toBe('refused');
  });

  it('carries a mosquitto_pub device message to Mosquitto as the device (its own certificate)', async () => {
    const { stderr } = await run(mosquittoPub!, ['-h', '127.0.0.1', '-p', String(gateway.mqttPort), '-u', IMSI, '-i', IMEI, '-q', '1', '-t', 'telemetry', '-m', 'hello-from-mosquitto_pub']);
    expect(stderr).toBe('');
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'hello-from-mosquitto_pub'));
    expect(observer.messages.find((x) => x.payload.toString() === 'hello-from-mosquitto_pub')!.topic).toBe(`devices/sim-${IMSI}/telemetry`);
  });

  it('keeps binary payloads exact over the TLS upstream', async () => {
    const payload = randomBytes(2048);
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(IMSI, IMEI));
    await device.publishAsync('blob', payload, { qos: 1 });
    await device.endAsync();
    await observer.waitUntil((m) => m.some((x) => x.payload.equals(payload)));
  });
});
