import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.ts';
import { httpFrom, withoutNodeLabel } from './helpers/http.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { gatewayState, withGatewayState } from './helpers/storage-mode.ts';

// Routes anyone may call. Any other route must refuse a missing token, a wrong token and too low a
// role; a route added as public by mistake fails here.
const PUBLIC = new Set([
  'GET /', 'HEAD /',
  'GET /healthz', 'HEAD /healthz',
  'GET /readyz', 'HEAD /readyz',
  'GET /metrics', 'HEAD /metrics',
  'GET /openapi.json', 'HEAD /openapi.json',
  'GET /installer', 'HEAD /installer',
  'GET /installer/installer.js', 'HEAD /installer/installer.js',
  'GET /installer/installer.css', 'HEAD /installer/installer.css',
]);

const IMSI = '001010000000701';
const MAX_FAILURES = 5;
// Source addresses the gateway treats as its reverse proxies (admin.trustProxy).
const PROXIES = '127.0.4.0/24';

interface Route {
  method: string;
  url: string;
  access: 'public' | 'installer' | 'operator';
}

/** Creates a token with the CLI, as an operator would; returns the secret it prints once, and its id. */
async function createToken(configFile: string, role: string): Promise<{ token: string; id: string }> {
  const r = await runCli(['tokens', 'create', '--role', role, '--name', `test ${role}`, '--json', '--config', configFile]);
  expect(r.code).toBe(0);
  return JSON.parse(r.output.slice(r.output.indexOf('{'))) as { token: string; id: string };
}

describe('admin API access control', () => {
  const dir = tempDir('admin-routes');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let configFile: string;
  let operator: string;
  let installer: string;
  let routes: Route[];
  // Each client address gets its own failure budget: distinct loopback sources, as distinct hosts would.
  let nextAddress = 1;
  const freshAddress = () => `127.0.1.${nextAddress++}`;

  const writeYamlFile = (name: string, value: unknown) => {
    const file = join(dir, name);
    writeFileSync(file, stringify(value));
    return file;
  };
  const call = (from: string, method: string, path: string, token?: string, body?: unknown) =>
    httpFrom(from, gateway.adminPort!, method, path, {
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    configFile = (await gatewayConfig(dir, sandbox)).file;
    const cfg = parse(readFileSync(configFile, 'utf8'));
    cfg.admin = { port: 0, auth: { maxFailures: MAX_FAILURES, failureWindowSeconds: 60 }, trustProxy: [PROXIES] };
    writeFileSync(configFile, stringify(cfg));
    operator = (await createToken(configFile, 'operator')).token;
    installer = (await createToken(configFile, 'installer')).token;
    gateway = await startGatewayProcess(configFile);
    expect(gateway.adminPort).toBeTypeOf('number');
    const created = await call('127.0.0.1', 'POST', '/v1/sims', operator, { imsi: IMSI });
    expect(created.status).toBe(201);
    const listed = await call('127.0.0.1', 'GET', '/v1/routes', operator);
    expect(listed.status).toBe(200);
    routes = listed.body.routes;
  });

  afterAll(async () => {
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('serves a route table that covers the API, and only the known routes are public', () => {
    const keys = routes.map((r) => `${r.method} ${r.url}`);
    for (const expected of ['GET /v1/sims', 'POST /v1/sims/import', 'PUT /v1/sims/:imsi/imei', 'GET /v1/audit', 'GET /v1/stats', 'PATCH /v1/sims/:imsi']) {
      expect(keys).toContain(expected);
    }
    const publicRoutes = routes.filter((r) => r.access === 'public').map((r) => `${r.method} ${r.url}`);
    expect(new Set(publicRoutes)).toEqual(PUBLIC);
  });

  it('refuses a missing token, a wrong token and too low a role on every protected route', async () => {
    // A fresh wrong token per route: failures also count per token prefix.
    const wrong = () => `sbt_${randomBytes(32).toString('base64url')}`;
    const problems: string[] = [];
    const protectedRoutes = routes.filter((r) => r.access !== 'public');
    expect(protectedRoutes.length).toBeGreaterThan(10);
    for (const route of protectedRoutes) {
      const path = route.url.replace(':imsi', IMSI);
      const name = `${route.method} ${route.url}`;
      const from = freshAddress();
      const cases: Array<{ what: string; token?: string; want: number }> = [
        { what: 'no token', want: 401 },
        { what: 'a wrong token', token: wrong(), want: 401 },
        { what: 'a malformed header', token: `${randomBytes(6).toString('hex')}-not-a-token`, want: 401 },
      ];
      if (route.access === 'operator') cases.push({ what: 'an installer token', token: installer, want: 403 });
      for (const c of cases) {
        const res = await call(from, route.method, path, c.token);
        if (res.status !== c.want) problems.push(`${name} with ${c.what}: ${res.status}, expected ${c.want}`);
        if (c.want === 401 && !String(res.headers['www-authenticate'] ?? '').startsWith('Bearer')) problems.push(`${name}: 401 without WWW-Authenticate`);
      }
      // The right role gets past the guard (the route may still refuse the empty request itself).
      const allowed = await call(freshAddress(), route.method, path, route.access === 'operator' ? operator : installer);
      if ([401, 403, 429].includes(allowed.status)) problems.push(`${name} refused its own role: ${allowed.status}`);
      if (route.access === 'installer') {
        const op = await call(freshAddress(), route.method, path, operator);
        if ([401, 403, 429].includes(op.status)) problems.push(`${name} refused an operator: ${op.status}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('audits failed attempts with the source address, the route and the reason', async () => {
    const res = await call('127.0.0.1', 'GET', '/v1/audit?kind=admin_auth_failed&limit=1000', operator);
    expect(res.status).toBe(200);
    const reasons = new Set(res.body.items.map((e: { detail: { reason: string } }) => e.detail.reason));
    expect(reasons).toEqual(new Set(['missing_token', 'unknown_token', 'insufficient_role']));
    const bind = res.body.items.find((e: { detail: { route: string; reason: string } }) => e.detail.route === '/v1/sims/:imsi/imei' && e.detail.reason === 'insufficient_role');
    expect(bind).toBeUndefined(); // installers may bind: never refused for role there
    const onSim = res.body.items.find((e: { imsi: string | null }) => e.imsi === IMSI);
    expect(onSim.detail.ip).toMatch(/^127\.0\.1\.\d+$/);
    const unknown = await call('127.0.0.1', 'GET', '/v1/audit?kind=admin_auth_failed,admin_auth_faild', operator);
    expect(unknown.status).toBe(400);
    expect(unknown.body).toMatchObject({ error: 'unknown_kind', message: expect.stringContaining('"admin_auth_faild"') });
  });

  it('throttles invalid tokens from an address after repeated failures, never a valid token, and leaves other addresses alone', async () => {
    const attacker = '127.0.2.1';
    for (let i = 0; i < MAX_FAILURES; i++) expect((await call(attacker, 'GET', '/v1/stats', 'sbt_guess' + i)).status).toBe(401);
    const blocked = await call(attacker, 'GET', '/v1/stats', 'sbt_guess-next');
    expect(blocked.status).toBe(429);
    expect(Number(blocked.headers['retry-after'])).toBeGreaterThan(0);
    expect((await call(attacker, 'GET', '/v1/stats')).status).toBe(429);
    // An operator sharing that address (a NAT, a proxy) is not locked out by someone else's guesses.
    expect((await call(attacker, 'GET', '/v1/stats', operator)).status).toBe(200);
    expect((await call(attacker, 'GET', '/v1/whoami', installer)).status).toBe(200);
    expect((await call('127.0.2.2', 'GET', '/v1/stats', 'sbt_other')).status).toBe(401);
    expect((await call('127.0.2.2', 'GET', '/v1/stats', operator)).status).toBe(200);
    const audit = await call('127.0.0.1', 'GET', '/v1/audit?kind=admin_auth_throttled', operator);
    expect(audit.body.items.map((e: { detail: { ip: string } }) => e.detail.ip)).toContain(attacker);
  });

  it('counts failures per token prefix, so guesses around a leaked prefix are stopped from any address', async () => {
    const prefix = operator.slice(0, 12);
    const guess = () => prefix + randomBytes(24).toString('base64url');
    for (let i = 0; i < MAX_FAILURES; i++) expect((await call(`127.0.6.${i + 1}`, 'GET', '/v1/stats', guess())).status).toBe(401);
    const fresh = '127.0.6.100';
    expect((await call(fresh, 'GET', '/v1/stats', guess())).status).toBe(429);
    expect((await call(fresh, 'GET', '/v1/stats', `sbt_${randomBytes(32).toString('base64url')}`)).status).toBe(401);
    // The token those guesses were aimed at still works, from anywhere.
    expect((await call(fresh, 'GET', '/v1/stats', operator)).status).toBe(200);
    const audit = await call('127.0.0.1', 'GET', '/v1/audit?kind=admin_auth_throttled', operator);
    expect(audit.body.items.map((e: { detail: { tokenPrefix?: string } }) => e.detail.tokenPrefix)).toContain(prefix);
  });

  it('behind a trusted proxy counts failures per client it names, and ignores X-Forwarded-For from anyone else', async () => {
    const proxy = '127.0.4.1';
    const via = (client: string, token?: string) =>
      httpFrom(proxy, gateway.adminPort!, 'GET', '/v1/stats', { headers: { 'x-forwarded-for': client, ...(token ? { authorization: `Bearer ${token}` } : {}) } });
    for (let i = 0; i < MAX_FAILURES; i++) expect((await via('203.0.113.7', `sbt_proxied${i}`)).status).toBe(401);
    expect((await via('203.0.113.7', 'sbt_proxied-next')).status).toBe(429);
    // Another client behind the same proxy is not locked out, nor is a valid token from the first one.
    expect((await via('203.0.113.8', 'sbt_proxied-other')).status).toBe(401);
    expect((await via('203.0.113.8', operator)).status).toBe(200);
    expect((await via('203.0.113.7', operator)).status).toBe(200);
    const audit = await call('127.0.0.1', 'GET', '/v1/audit?kind=admin_auth_failed&limit=1000', operator);
    const proxied = audit.body.items.find((e: { detail: { ip: string } }) => e.detail.ip === '203.0.113.7');
    expect(proxied.detail.via).toBe(proxy);

    // A host that is not a trusted proxy cannot pick a fresh identity per request with the header.
    const spoofer = '127.0.5.1';
    for (let i = 0; i < MAX_FAILURES; i++) {
      const res = await httpFrom(spoofer, gateway.adminPort!, 'GET', '/v1/stats', { headers: { 'x-forwarded-for': `198.51.100.${i}`, authorization: `Bearer sbt_spoof${i}` } });
      expect(res.status).toBe(401);
    }
    const spoofed = await httpFrom(spoofer, gateway.adminPort!, 'GET', '/v1/stats', { headers: { 'x-forwarded-for': '198.51.100.99', authorization: 'Bearer sbt_spoof-next' } });
    expect(spoofed.status).toBe(429);
  });

  it('refuses an admin.host other than loopback without TLS, unless plain HTTP is allowed explicitly', async () => {
    const check = (admin: unknown) => runCli(['config', 'check', writeYamlFile(`admin-${Math.random()}.yaml`, { admin })]);
    const open = await check({ host: '0.0.0.0' });
    expect(open.code).toBe(78);
    expect(open.output).toContain('admin.host: 0.0.0.0 is not a loopback address and the admin server has no TLS');
    expect((await check({ host: '0.0.0.0', allowPlainHttp: true })).code).toBe(0);
    expect((await check({ host: '0.0.0.0', tls: { certFile: 'cert.pem', keyFile: 'key.pem' } })).code).toBe(0);
    expect((await check({ host: '::1' })).code).toBe(0);
    const badProxy = await check({ trustProxy: ['10.0.0.0/33'] });
    expect(badProxy.code).toBe(78);
    expect(badProxy.output).toContain('admin.trustProxy.0');
  });

  it('refuses a revoked token; the tokens command lists, revokes and checks its arguments', async () => {
    const { token, id } = await createToken(configFile, 'operator');
    expect((await call('127.0.3.1', 'GET', '/v1/stats', token)).status).toBe(200);
    const list = await runCli(['tokens', 'list', '--json', '--config', configFile]);
    const listed = (JSON.parse(list.output.slice(list.output.indexOf('['))) as Array<{ id: string; lastUsedAt: number | null }>).find((t) => t.id === id)!;
    expect(listed.lastUsedAt).toBeTypeOf('number');
    expect(list.output).not.toContain(token);
    expect((await runCli(['tokens', 'revoke', id, '--config', configFile])).code).toBe(0);
    expect((await call('127.0.3.1', 'GET', '/v1/stats', token)).status).toBe(401);
    expect((await runCli(['tokens', 'revoke', 'nosuchid', '--config', configFile])).code).toBe(2);
    expect((await runCli(['tokens', 'create', '--role', 'admin', '--config', configFile])).code).toBe(64);
    expect((await runCli(['tokens', 'frobnicate', '--config', configFile])).code).toBe(64);
  });

  it('stores tokens only as hashes', async () => {
    const rows = await withGatewayState(join(dir, 'gateway'), (db) => db.all('SELECT * FROM admin_tokens'));
    const dump = JSON.stringify(rows);
    expect(dump).not.toContain(operator);
    expect(dump).not.toContain(installer);
    expect(rows.every((r) => /^[0-9a-f]{64}$/.test(String(r.token_hash)))).toBe(true);
  });

  it('publishes an OpenAPI document with request and response schemas for every API route', async () => {
    const res = await call('127.0.0.1', 'GET', '/openapi.json');
    expect(res.status).toBe(200);
    expect(res.body.openapi).toMatch(/^3\./);
    expect(res.body.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    const apiRoutes = routes.filter((r) => r.url.startsWith('/v1/') && r.method !== 'HEAD');
    for (const r of apiRoutes) {
      const op = res.body.paths[r.url.replace(/:(\w+)/g, '{$1}')]?.[r.method.toLowerCase()];
      expect(op, `${r.method} ${r.url}`).toBeDefined();
      expect(Object.keys(op.responses).some((code) => code.startsWith('2')), `${r.method} ${r.url} documents its success`).toBe(true);
      expect(Object.keys(op.responses)).toEqual(expect.arrayContaining(['401', '403', '429']));
      if (['POST', 'PUT', 'PATCH'].includes(r.method) && r.url !== '/v1/retention/run') expect(op.requestBody, `${r.method} ${r.url} body`).toBeDefined();
      expect(op.security).toEqual([{ bearer: [] }]);
    }
    expect(res.body.paths['/v1/sims/import'].post.requestBody.content).toHaveProperty('text/csv');
    expect(res.body.paths['/v1/sims/{imsi}/imei'].put.requestBody.content['application/json'].schema.required).toEqual(['imei']);
  });

  it('answers health, readiness and metrics without a token', async () => {
    expect((await call('127.0.0.1', 'GET', '/healthz')).body).toEqual({ status: 'ok' });
    expect((await call('127.0.0.1', 'GET', '/readyz')).status).toBe(200);
    const metrics = await call('127.0.0.1', 'GET', '/metrics');
    expect(withoutNodeLabel(metrics.body)).toContain('simbridge_admin_auth_failures_total{reason="missing_token"}');
  });

  it('deletes audit events and dead letters past their age when retention runs', async () => {
    const db = await gatewayState(join(dir, 'gateway'), { writable: true });
    const old = Date.now() - 400 * 86_400_000;
    const byte = Buffer.from([0]);
    await db.run("INSERT INTO audit (at, imsi, kind, detail) VALUES (?, ?, 'old_event', '{}')", old, IMSI);
    await db.run("INSERT INTO dead_letters (imsi, device_topic, payload, received_at, reason, failed_at) VALUES (?, 't', ?, ?, 'test', ?)", IMSI, byte, old, old);
    await db.run("INSERT INTO dead_letters (imsi, device_topic, payload, received_at, reason, failed_at) VALUES (?, 't', ?, ?, 'recent', ?)", IMSI, byte, Date.now(), Date.now());
    await db.close();
    const res = await call('127.0.0.1', 'POST', '/v1/retention/run', operator);
    expect(res.status).toBe(200);
    expect(res.body.deleted).toMatchObject({ audit: 1, deadLetters: 1 });
    const check = await gatewayState(join(dir, 'gateway'));
    expect(await check.get("SELECT count(*) AS n FROM audit WHERE kind = 'old_event'")).toEqual({ n: 0 });
    expect(await check.all('SELECT reason FROM dead_letters')).toEqual([{ reason: 'recent' }]);
    await check.close();
  });
});
