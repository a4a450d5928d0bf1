import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.ts';
import { freePort, gatewayConfig, startSandboxProcess, tempDir, TEST_MASTER_KEY, type SandboxProcess } from './helpers/processes.ts';
import { permissionProbes } from '../vending/permissions.ts';

describe('simbridge doctor against the sandbox', () => {
  const dir = tempDir('doctor');
  let sandbox: SandboxProcess;
  let config: string;
  const env = { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY };
  const faults = (body: unknown) =>
    fetch(`${sandbox.controlEndpoint}/_sandbox/faults`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    config = (await gatewayConfig(dir, sandbox)).file;
  });

  afterAll(async () => {
    await sandbox?.process.kill();
  });

  it('passes every check, one line each, and exits 0', async () => {
    const { code, output } = await runCli(['doctor', '--config', config], env);
    expect(output).not.toContain('✗');
    for (const check of ['config', 'master key', 'data directory', 'device MQTT port', 'AWS credentials', 'clock', 'IoT Core endpoint', 'IoT Core data plane']) {
      expect(output).toMatch(new RegExp(`^✓ ${check}: `, 'm'));
    }
    for (const p of permissionProbes) expect(output).toContain(`✓ permission ${p.action}: allowed`);
    expect(code).toBe(0);
  }, 60_000);

  it('names a permission the account denies, with the fix, and exits 1', async () => {
    expect((await faults({ denied: ['CreateThing', 'ListCertificates'] })).ok).toBe(true);
    try {
      const { code, output } = await runCli(['doctor', '--config', config], env);
      expect(output).toMatch(/^✗ permission iot:CreateThing: .*not authorized to perform: iot:CreateThing/m);
      expect(output).toMatch(/^✗ permission iot:ListCertificates: /m);
      expect(output).toContain("fix: allow iot:CreateThing in the gateway's IAM policy");
      expect(output).toMatch(/^✓ permission iot:AttachPolicy: /m);
      expect(code).toBe(1);
    } finally {
      await faults({ denied: [] });
    }
  }, 60_000);

  it('reports an unreachable AWS endpoint instead of passing, and exits 1', async () => {
    const closed = await freePort();
    const unreachable = (await gatewayConfig(tempDir('doctor-unreachable'), { ...sandbox, controlEndpoint: `http://127.0.0.1:${closed}` }, { upstreamPort: closed })).file;
    const { code, output } = await runCli(['doctor', '--config', unreachable], env);
    expect(output).toMatch(/^✗ IoT Core endpoint: DescribeEndpoint at http:\/\/127\.0\.0\.1:\d+: /m);
    expect(output).toMatch(/^✗ clock: /m);
    expect(output).toMatch(/^✗ permission iot:CreateThing: no answer/m);
    expect(code).toBe(1);
  }, 60_000);

  it('refuses a master key that is not 32 bytes', async () => {
    const { code, output } = await runCli(['doctor', '--config', config], { SIMBRIDGE_MASTER_KEY: 'not-a-key' });
    expect(output).toMatch(/^✗ master key: SIMBRIDGE_MASTER_KEY: master key must be 32 bytes/m);
    expect(code).toBe(1);
  }, 60_000);
});
