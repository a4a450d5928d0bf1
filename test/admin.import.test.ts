import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { luhnDigit } from '../lib/ids.ts';
import { runCli } from './helpers/cli.ts';
import { connectDevice, deviceOptions } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { withGatewayState } from './helpers/storage-mode.ts';

const withLuhn = (body: string) => body + luhnDigit(body);
const ICCID_1 = withLuhn('898821100000000100');
const ICCID_2 = withLuhn('898821100000000200');
const ICCID_BAD = ICCID_1.slice(0, -1) + ((Number(ICCID_1.at(-1)) + 1) % 10);
const IMEI_1 = withLuhn('35345678000001');
const IMEI_2 = withLuhn('35345678000002');
const IMEI_BAD = IMEI_1.slice(0, -1) + ((Number(IMEI_1.at(-1)) + 3) % 10);

// Line numbers as an editor shows them; line 1 is the header.
const CSV = [
  'imsi,iccid,msisdn,group,imei,tags', //                                   1
  `001010000001001,${ICCID_1},+15550001,fleet,${IMEI_1},site=north;rack=3`, // 2 good
  '001010000001002,,,,,', //                                                 3 good: default group, nothing else
  '00101x,,,,,', //                                                          4 bad IMSI
  `001010000001004,${ICCID_BAD},,,,`, //                                     5 bad ICCID check digit
  '001010000001005,,,nosuchgroup,,', //                                      6 group not configured
  `001010000001006,,,,${IMEI_BAD},`, //                                      7 bad IMEI check digit
  '001010000001007,,,,,novalue', //                                          8 bad tags
  '', //                                                                     9 blank: skipped
  `"001010000001008","${ICCID_2}",,fleet,,"site=south"`, //                  10 good, quoted
  `001010000001009,${ICCID_1},,,,`, //                                       11 ICCID of another SIM
].join('\n');

interface Report {
  rows: number;
  created: number;
  updated: number;
  unchanged: number;
  failed: number;
  errors: Array<{ line: number; imsi?: string; field?: string; message: string }>;
  dryRun: boolean;
}

const json = <T>(output: string): T => JSON.parse(output.slice(output.search(/[[{]/))) as T;

describe('SIM import and the sims / stats commands', () => {
  const dir = tempDir('admin-import');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let configFile: string;
  let token: string;
  let url: string;
  const sims = (...args: string[]) => runCli(['sims', ...args, '--url', url, '--token', token]);
  const file = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };
  const snapshot = () => withGatewayState(join(dir, 'gateway'), (db) => db.all('SELECT * FROM sims ORDER BY imsi'));
  const api = async (method: string, path: string, body?: string, contentType = 'text/csv') => {
    const res = await fetch(`${url}${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': contentType } : {}) }, body });
    return { status: res.status, body: (await res.json()) as any };
  };

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    configFile = (await gatewayConfig(dir, sandbox, { groups: { default: { lock: 'first-contact' }, fleet: { lock: 'locked' } } })).file;
    const created = await runCli(['tokens', 'create', '--role', 'operator', '--name', 'ops@test', '--config', configFile]);
    expect(created.code).toBe(0);
    token = created.output.match(/sbt_\S+/)![0];
    gateway = await startGatewayProcess(configFile);
    url = `http://127.0.0.1:${gateway.adminPort}`;
  });

  afterAll(async () => {
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('imports good rows and reports each bad one by line (exit 1)', async () => {
    const r = await sims('import', file('sims.csv', CSV), '--json');
    expect(r.code).toBe(1);
    const report = json<Report>(r.output);
    expect(report).toMatchObject({ rows: 9, created: 3, updated: 0, unchanged: 0, failed: 6 });
    expect(report.errors.map((e) => [e.line, e.field])).toEqual([
      [4, 'imsi'],
      [5, 'iccid'],
      [6, 'group'],
      [7, 'imei'],
      [8, 'tags'],
      [11, 'iccid'],
    ]);
    expect(report.errors.find((e) => e.line === 5)!.message).toMatch(/check digit/);
    expect(report.errors.find((e) => e.line === 11)!.message).toContain('001010000001001');

    const stored = (await snapshot()) as Array<Record<string, unknown>>;
    expect(stored.map((s) => s.imsi)).toEqual(['001010000001001', '001010000001002', '001010000001008']);
    expect(stored[0]).toMatchObject({ iccid: ICCID_1, msisdn: '+15550001', group_name: 'fleet', bound_imei: IMEI_1, thing_name: 'sim-001010000001001' });
    expect(JSON.parse(String(stored[0]!.tags))).toEqual({ site: 'north', rack: '3' });
    expect(stored[1]).toMatchObject({ group_name: 'default', bound_imei: null });
  });

  it('changes nothing when the same file is imported again', async () => {
    const before = await snapshot();
    const r = await sims('import', join(dir, 'sims.csv'), '--json');
    expect(json<Report>(r.output)).toMatchObject({ rows: 9, created: 0, updated: 0, unchanged: 3, failed: 6 });
    expect(await snapshot()).toEqual(before);
  });

  it('updates changed rows, refuses to move a bound SIM to another IMEI unless forced, and audits the bind', async () => {
    const csv = ['imsi,imei,tags,group', `001010000001001,${IMEI_2},site=east,fleet`, '001010000001002,,role=spare,'].join('\n');
    const plain = json<Report>((await sims('import', file('update.csv', csv), '--json')).output);
    expect(plain).toMatchObject({ created: 0, updated: 1, failed: 1 });
    expect(plain.errors[0]).toMatchObject({ line: 2, field: 'imei' });
    const dry = json<Report>((await sims('import', join(dir, 'update.csv'), '--json', '--force', '--dry-run')).output);
    expect(dry).toMatchObject({ dryRun: true, updated: 1, unchanged: 1, failed: 0 });
    expect(((await snapshot()) as Array<{ bound_imei: string }>)[0]!.bound_imei).toBe(IMEI_1);
    const forced = await sims('import', join(dir, 'update.csv'), '--force');
    expect(forced.code).toBe(0);
    expect(forced.output).toMatch(/2 rows in .* 1 updated, 1 unchanged, 0 failed/);
    expect(((await snapshot()) as Array<{ bound_imei: string }>)[0]!.bound_imei).toBe(IMEI_2);
    const audit = await api('GET', '/v1/audit?imsi=001010000001001&kind=imei_bound');
    expect(audit.body.items[0].detail).toMatchObject({ imei: IMEI_2, previous: IMEI_1, via: 'import', by: 'ops@test' });
  });

  it('refuses a file whose header is wrong, naming the problem', async () => {
    const r = await sims('import', file('bad.csv', 'imsi,colour\n001010000001099,red\n'));
    expect(r.code).toBe(1);
    expect(r.output).toContain('unknown column "colour"');
    // A file without its header: the first row is read as one and refused, so no row is taken as a name.
    const headless = await api('POST', '/v1/sims/import', '001010000001099,,,\n');
    expect(headless.status).toBe(400);
    expect(headless.body).toMatchObject({ error: 'invalid_csv' });
    expect(headless.body.message).toMatch(/line 1: unknown column "001010000001099"/);
  });

  it('imports 10,000 rows in a few seconds, and imports them again idempotently', async () => {
    const lines = ['imsi,iccid,group,imei,tags'];
    for (let i = 0; i < 10_000; i++) {
      const n = String(i).padStart(6, '0');
      lines.push(`0010122${n.padStart(8, '0')},${withLuhn(`89882120000${n.padStart(7, '0')}`)},fleet,${withLuhn(`35345679${n}`)},batch=big`);
    }
    const csv = lines.join('\n');
    const t0 = performance.now();
    const first = await api('POST', '/v1/sims/import', csv);
    const seconds = (performance.now() - t0) / 1000;
    expect(first.body).toMatchObject({ rows: 10_000, created: 10_000, failed: 0 });
    expect(seconds).toBeLessThan(10);
    const again = await api('POST', '/v1/sims/import', csv);
    expect(again.body).toMatchObject({ rows: 10_000, created: 0, updated: 0, unchanged: 10_000 });
    const listed = await api('GET', '/v1/sims?tag=batch%3Dbig&limit=1');
    expect(listed.body.total).toBe(10_000);
  });

  it('lists with filters and pages, and shows one SIM', async () => {
    const list = await sims('list', '--group', 'fleet', '--bound', '--q', '1010000001', '--json');
    expect(list.code).toBe(0);
    expect(json<{ items: Array<{ imsi: string }> }>(list.output).items.map((s) => s.imsi)).toEqual(['001010000001001']);
    const table = await sims('list', '--status', 'active', '--unbound', '--limit', '1');
    expect(table.output).toMatch(/IMSI\s+ICCID\s+GROUP\s+STATUS\s+IMEI\s+ONLINE\s+LAST SEEN/);
    expect(table.output).toMatch(/1 of 2 shown; more with --cursor 001010000001002/);
    const show = await sims('show', '001010000001001');
    expect(show.code).toBe(0);
    expect(show.output).toMatch(/lock:\s+locked \(from group\), bound IMEI 353456780000029/);
    expect(show.output).toContain('site=east');
  });

  it('binds, refuses a second device, unbinds and terminates with exit codes scripts can use', async () => {
    const imsi = '001010000001002';
    expect((await sims('bind', imsi, IMEI_BAD)).code).toBe(1);
    const bound = await sims('bind', imsi, IMEI_1);
    expect(bound.code).toBe(0);
    expect(bound.output).toContain(`${imsi} bound to ${IMEI_1}`);
    const conflict = await sims('bind', imsi, IMEI_2);
    expect(conflict.code).toBe(1);
    expect(conflict.output).toContain(`bound to ${IMEI_1}`);
    expect((await sims('bind', imsi, IMEI_2, '--force')).code).toBe(0);
    expect((await sims('unbind', imsi)).output).toContain(`unbound (was ${IMEI_2})`);
    const terminated = await sims('terminate', imsi, '--json');
    const revocation = json<{ revocation: { state: string } }>(terminated.output).revocation;
    // 0 only when the certificate was revoked; a gateway without a revoker says so and exits 1.
    expect(terminated.code).toBe(revocation.state === 'revoked' ? 0 : 1);
    expect((await sims('bind', imsi, IMEI_1)).code).toBe(1);
    const events = await api('GET', `/v1/audit?imsi=${imsi}`);
    expect(events.body.items.map((e: { kind: string }) => e.kind)).toEqual(expect.arrayContaining(['imei_bound', 'imei_unbound', 'sim_status_changed']));
    expect(events.body.items.find((e: { kind: string }) => e.kind === 'imei_unbound').detail).toMatchObject({ previous: IMEI_2, by: 'ops@test', role: 'operator' });
  });

  it('exits 2 for an unknown SIM, 77 without a valid token, 64 on a usage mistake', async () => {
    expect((await sims('show', '001019999999999')).code).toBe(2);
    expect((await runCli(['sims', 'list', '--url', url, '--token', 'sbt_wrong'])).code).toBe(77);
    expect((await runCli(['sims', 'list', '--url', url], { SIMBRIDGE_ADMIN_TOKEN: '' })).code).toBe(77);
    expect((await sims('bind', '001010000001001')).code).toBe(64);
    expect((await sims('frobnicate')).code).toBe(64);
    expect((await sims('list', '--colour', 'red')).code).toBe(64);
    expect((await runCli(['sims', 'list', '--url', 'http://127.0.0.1:1', '--token', token])).code).toBe(1);
  });

  it('reports the fleet with `stats`, and a device\'s first message and certificate in its view', async () => {
    const imsi = '001010000001008';
    // The fleet group is locked and this SIM is not bound: the gateway refuses it until someone binds it.
    expect((await connectDevice(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(imsi, IMEI_1))).code).toBe(5);
    expect((await api('PUT', `/v1/sims/${imsi}/imei`, JSON.stringify({ imei: IMEI_1 }), 'application/json')).status).toBe(200);
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(imsi, IMEI_1));
    await client.publishAsync('telemetry', 'hello', { qos: 1 });
    await client.endAsync();
    let view: any;
    for (let i = 0; i < 100; i++) {
      view = json((await sims('show', imsi, '--json')).output);
      if (view.certificate.state === 'ready') break;
      await new Promise((r) => setTimeout(r, 300));
    }
    expect(view.certificate).toMatchObject({ state: 'ready', step: 'ready' });
    expect(view.certificate.certificateId).toMatch(/\w+/);
    expect(view.recentEvents.map((e: { kind: string }) => e.kind)).toContain('imei_not_bound');
    const stats = await runCli(['stats', '--url', url, '--token', token, '--json']);
    expect(stats.code).toBe(0);
    const s = json<{ sims: { total: number; terminated: number }; certificates: { ready: number }; groups: Array<{ group: string }> }>(stats.output);
    expect(s.sims.total).toBe(10_003);
    expect(s.sims.terminated).toBe(1);
    expect(s.certificates.ready).toBeGreaterThanOrEqual(1);
    expect(s.groups.map((g) => g.group)).toEqual(['default', 'fleet']);
    const human = await runCli(['stats', '--url', url, '--token', token]);
    expect(human.output).toMatch(/SIMs:\s+10003 \(10002 active, 0 suspended, 1 terminated\)/);
  });
});
