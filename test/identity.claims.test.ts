import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.ts';
import { findPeer } from './helpers/interop.ts';
import { connectDevice, deviceOptions } from './helpers/mqtt.ts';
import {
  gatewayConfig,
  spawnCli,
  startGatewayProcess,
  startSandboxProcess,
  tempDir,
  TEST_MASTER_KEY,
  type GatewayProcess,
  type SandboxProcess,
} from './helpers/processes.ts';
import { withGatewayState } from './helpers/storage-mode.ts';

// The attacker of the hardening report: anyone on the device network, with mosquitto_pub, claiming a SIM
// that is not theirs. Outside the sandbox claimed identity must need the SIM's secret.
const mosquittoPub = findPeer('mosquitto_pub', 'mosquitto-clients');
const VICTIM = '001010000000501';
const API_SIM = '001010000000502';
const CSV_SIM = '001010000000503';
const REAL_IMEI = '490154203237518';
const ATTACKER_IMEI = '356938035643809';

function run(cmd: string, args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 15_000 }, (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, output: stdout + stderr }));
  });
}

describe.skipIf(!mosquittoPub)('claimed identity outside the sandbox', () => {
  const dir = tempDir('identity-claims');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let token: string;
  let url: string;

  const api = async (method: string, path: string, body?: unknown, contentType = 'application/json') => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': contentType } : {}) },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as any };
  };
  const pub = (imsi: string, imei: string, secret?: string) =>
    run(mosquittoPub!, ['-h', '127.0.0.1', '-p', String(gateway.mqttPort), '-u', imsi, '-i', imei, ...(secret ? ['-P', secret] : []), '-q', '1', '-t', 't', '-m', 'x']);
  const post = (imsi: string, imei: string, secret?: string) =>
    fetch(`http://127.0.0.1:${gateway.httpPort}/topics/t?qos=1`, {
      method: 'POST',
      headers: { 'x-imsi': imsi, 'x-imei': imei, ...(secret ? { authorization: `Bearer ${secret}` } : {}) },
      body: 'x',
    });
  const mqttCode = async (imsi: string, password?: string) => {
    const { code, client } = await connectDevice(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(imsi, REAL_IMEI, password ? { password: Buffer.from(password) } : {}));
    client.end(true);
    return code;
  };
  const auditKinds = async (imsi: string) => ((await api('GET', `/v1/audit?imsi=${imsi}`)).body.items as Array<{ kind: string; detail: any }>);

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    // The safe way to run claimed identity in front of an account: every group requires the SIM's secret.
    const cfg = await gatewayConfig(dir, sandbox, { identity: { allowInsecureClaims: false }, groups: { default: { requireSecret: true } } });
    const created = await runCli(['tokens', 'create', '--role', 'operator', '--name', 'ops@test', '--config', cfg.file]);
    expect(created.code, created.output).toBe(0);
    token = created.output.match(/sbt_\S+/)![0];
    gateway = await startGatewayProcess(cfg.file);
    url = `http://127.0.0.1:${gateway.adminPort}`;
    expect((await api('POST', '/v1/sims', { imsi: VICTIM })).status).toBe(201);
    expect((await api('POST', '/v1/sims', { imsi: API_SIM })).status).toBe(201);
  });

  afterAll(async () => {
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('refuses to start with claimed identity and no per-SIM secrets, naming the key to change', async () => {
    const open = join(dir, 'open');
    mkdirSync(open);
    const cfg = await gatewayConfig(open, sandbox, { identity: { allowInsecureClaims: false } });
    const proc = spawnCli(['start', '--config', cfg.file], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY });
    expect(await proc.exited).toBe(78);
    expect(proc.output).toContain('listeners.mqtt.identity: claimed identity without per-SIM secrets (requireSecret is off in group default)');
    expect(proc.output).toContain('listeners.http.identity: claimed identity without per-SIM secrets');
    expect(proc.output).not.toContain('simbridge is running');
  });

  it('with identity.allowInsecureClaims it starts, and the banner and /readyz say what that allows', async () => {
    const lab = join(dir, 'lab');
    mkdirSync(lab);
    const cfg = await gatewayConfig(lab, sandbox, { identity: { allowInsecureClaims: true } });
    const insecure = await startGatewayProcess(cfg.file);
    try {
      await insecure.waitFor(/INSECURE listeners\.http\.identity.*\n/);
      expect(insecure.output).toMatch(/!! devices can pass for SIMs they are not \(identity\.allowInsecureClaims: true\)/);
      expect(insecure.output).toMatch(/!! INSECURE listeners\.mqtt\.identity: claimed identity without per-SIM secrets/);
      const ready = (await (await fetch(`http://127.0.0.1:${insecure.adminPort}/readyz`)).json()) as { status: string; warnings?: string[] };
      expect(ready.status).toBe('ready');
      expect(ready.warnings).toEqual([expect.stringMatching(/^INSECURE listeners\.mqtt\.identity: claimed identity/), expect.stringMatching(/^INSECURE listeners\.http\.identity/)]);
    } finally {
      await insecure.kill();
    }
    // The safe gateway reports no warning.
    expect(await (await fetch(`${url}/readyz`)).json()).not.toHaveProperty('warnings');
  });

  it('refuses mosquitto_pub claiming a SIM without its secret, over MQTT and HTTP, and audits it', async () => {
    const r = await pub(VICTIM, ATTACKER_IMEI);
    expect(r.code).not.toBe(0);
    expect(r.output).toMatch(/bad user name or password|not authori[sz]ed/i);
    expect((await post(VICTIM, ATTACKER_IMEI)).status).toBe(401);
    expect((await auditKinds(VICTIM)).filter((e) => e.kind === 'bad_secret')).toHaveLength(2);
    // Nothing was bound by the attempt.
    expect((await api('GET', `/v1/sims/${VICTIM}`)).body.sim.boundImei).toBeNull();
    // An IMSI nobody registered is answered the same way, and not added to the registry (it could
    // never pass: it has no secret).
    const stranger = '001010000000599';
    const s = await pub(stranger, ATTACKER_IMEI);
    expect(s.code).not.toBe(0);
    expect(s.output).toMatch(/bad user name or password|not authori[sz]ed/i);
    expect((await post(stranger, ATTACKER_IMEI)).status).toBe(401);
    expect((await api('GET', `/v1/sims/${stranger}`)).status).toBe(404);
  });

  it('`simbridge sims secret IMSI` prints a generated secret once; with it the device gets in', async () => {
    const r = await runCli(['sims', 'secret', VICTIM, '--url', url, '--token', token]);
    expect(r.code, r.output).toBe(0);
    const secret = r.output.match(new RegExp(`${VICTIM} secret: (\\S+)`))![1]!;
    expect(secret).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(r.output).toContain('shown this once');
    const view = await api('GET', `/v1/sims/${VICTIM}`);
    expect(view.body.sim.hasSecret).toBe(true);
    expect(JSON.stringify(view.body)).not.toContain(secret);

    expect((await pub(VICTIM, REAL_IMEI, secret)).code).toBe(0);
    expect((await post(VICTIM, REAL_IMEI, secret)).status).toBe(202);
    expect((await pub(VICTIM, REAL_IMEI, `${secret}x`)).code).not.toBe(0);
    expect((await post(VICTIM, REAL_IMEI, 'wrong-secret-0123456789')).status).toBe(401);
    // First contact over claimed identity bound nothing: the group does not set bindClaimedImei.
    expect((await api('GET', `/v1/sims/${VICTIM}`)).body.sim.boundImei).toBeNull();
    expect((await auditKinds(VICTIM)).find((e) => e.kind === 'secret_set')!.detail).toMatchObject({ generated: true, by: 'ops@test' });
  });

  it('PUT /v1/sims/{imsi}/secret takes a secret already in the device without echoing it; DELETE removes it', async () => {
    const given = 'device-secret-0123456789';
    const set = await api('PUT', `/v1/sims/${API_SIM}/secret`, { secret: given });
    expect(set.status).toBe(200);
    expect(set.body).not.toHaveProperty('secret');
    expect(set.body.sim.hasSecret).toBe(true);
    expect(await mqttCode(API_SIM, given)).toBe(0);
    expect((await api('PUT', `/v1/sims/${API_SIM}/secret`, { secret: 'short' })).status).toBe(400);
    expect((await api('PUT', '/v1/sims/001019999999999/secret', {})).status).toBe(404);
    const cleared = await api('DELETE', `/v1/sims/${API_SIM}/secret`);
    expect(cleared.body.sim.hasSecret).toBe(false);
    expect(await mqttCode(API_SIM, given)).toBe(4);
    expect((await auditKinds(API_SIM)).map((e) => e.kind)).toEqual(expect.arrayContaining(['secret_set', 'secret_cleared']));
  });

  it('imports secrets from a CSV secret column, stores only their hash, and a re-import changes nothing', async () => {
    const secret = 'csv-secret-0123456789abc';
    const csv = `imsi,secret\n${CSV_SIM},${secret}\n001010000000504,short\n`;
    const first = await api('POST', '/v1/sims/import', csv, 'text/csv');
    expect(first.body).toMatchObject({ rows: 2, created: 1, failed: 1 });
    expect(first.body.errors).toEqual([expect.objectContaining({ line: 3, field: 'secret' })]);
    const stored = (await withGatewayState(join(dir, 'gateway'), (db) => db.get<{ secret_hash: string }>('SELECT secret_hash FROM sims WHERE imsi = ?', CSV_SIM)))!.secret_hash;
    expect(stored).toMatch(/^scrypt\$/);
    expect(stored).not.toContain(secret);
    expect(await mqttCode(CSV_SIM, secret)).toBe(0);
    expect(await mqttCode(CSV_SIM)).toBe(4);
    const again = await api('POST', '/v1/sims/import', csv, 'text/csv');
    expect(again.body).toMatchObject({ created: 0, updated: 0, unchanged: 1, failed: 1 });
    expect((await auditKinds(CSV_SIM)).filter((e) => e.kind === 'secret_set').map((e) => e.detail.via)).toEqual(['import']);
  });
});
