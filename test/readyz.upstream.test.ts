import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceOptions } from './helpers/mqtt.ts';
import { freePort, gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

interface Readiness {
  status: string;
  checks: Record<string, boolean>;
  reasons: Record<string, string>;
}

const readyz = async (g: GatewayProcess) => {
  const res = await fetch(`http://127.0.0.1:${g.adminPort}/readyz`);
  return { code: res.status, body: (await res.json()) as Readiness };
};

describe('/readyz and the banner report the way to IoT Core', () => {
  const dir = tempDir('readyz');
  let sandbox: SandboxProcess;
  const gateways: GatewayProcess[] = [];

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
  });

  afterAll(async () => {
    for (const g of gateways) await g.kill();
    await sandbox?.process.kill();
  });

  it('is ready when IoT Core answers', async () => {
    const g = await startGatewayProcess((await gatewayConfig(tempDir('readyz-ok'), sandbox)).file);
    gateways.push(g);
    const { code, body } = await readyz(g);
    expect(body.checks).toMatchObject({ database: true, mqtt: true, http: true, vending: true, upstream: true });
    expect(code).toBe(200);
    expect(g.output).not.toContain('WARNING');
  }, 60_000);

  it('warns at start and is not ready while the control plane cannot be reached, with the reason', async () => {
    const closed = await freePort();
    const unreachable = { ...sandbox, controlEndpoint: `http://127.0.0.1:${closed}` };
    const g = await startGatewayProcess((await gatewayConfig(tempDir('readyz-down'), unreachable, { upstream: { startupCheckMs: 2000, healthRetryMs: 1000 }, vending: { callMaxAttempts: 1 } })).file);
    gateways.push(g);
    await g.waitFor(/WARNING: .*no device can be vended/);
    const { code, body } = await readyz(g);
    expect(code).toBe(503);
    expect(body.status).toBe('not ready');
    expect(body.checks.vending).toBe(false);
    expect(body.reasons.vending).toMatch(/IoT Core control plane: /);
  }, 60_000);

  it('is not ready after an upstream CONNECT failed, and names the thing', async () => {
    const closed = await freePort();
    const g = await startGatewayProcess((await gatewayConfig(tempDir('readyz-connect'), sandbox, { upstreamPort: closed, upstream: { connectTimeoutMs: 2000 } })).file);
    gateways.push(g);
    expect((await readyz(g)).code).toBe(200);
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${g.mqttPort}`, deviceOptions('001010000000081', '490154203237518'));
    await device.publishAsync('t', 'x', { qos: 1 });
    await device.endAsync();
    const deadline = Date.now() + 30_000;
    let last = await readyz(g);
    while (last.code === 200 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      last = await readyz(g);
    }
    expect(last.code).toBe(503);
    expect(last.body.checks.upstream).toBe(false);
    expect(last.body.reasons.upstream).toMatch(/CONNECT of sim-001010000000081 failed/);
  }, 60_000);
});
