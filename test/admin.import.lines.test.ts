import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { withGatewayState } from './helpers/storage-mode.ts';

// Every line of an import file is either a SIM in the registry or an error with its line number:
// an oversized, unreadable or non-UTF-8 line never takes the lines after it down with it.
const imsi = (prefix: string, i: number) => `${prefix}${String(i).padStart(15 - prefix.length, '0')}`;

interface Report {
  rows: number;
  created: number;
  updated: number;
  unchanged: number;
  failed: number;
  errors: Array<{ line: number; imsi?: string; field?: string; message: string }>;
}

describe('SIM import, line by line', () => {
  const dir = tempDir('import-lines');
  let sandbox: SandboxProcess;
  let gateway: GatewayProcess;
  let token: string;
  let url: string;

  const importCsv = async (body: string | Buffer) => {
    const res = await fetch(`${url}/v1/sims/import`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'text/csv' }, body: typeof body === 'string' ? body : new Uint8Array(body) });
    return { status: res.status, body: (await res.json()) as any };
  };
  const stored = (prefix: string) =>
    withGatewayState(join(dir, 'gateway'), (db) => db.all<{ imsi: string; tags: string }>("SELECT imsi, tags FROM sims WHERE imsi LIKE ? || '%' ORDER BY imsi", prefix));

  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    const cfg = await gatewayConfig(dir, sandbox);
    const created = await runCli(['tokens', 'create', '--role', 'operator', '--name', 'ops@test', '--config', cfg.file]);
    expect(created.code, created.output).toBe(0);
    token = created.output.match(/sbt_\S+/)![0];
    gateway = await startGatewayProcess(cfg.file);
    url = `http://127.0.0.1:${gateway.adminPort}`;
  });

  afterAll(async () => {
    await gateway?.kill();
    await sandbox?.process.kill();
  });

  it('imports the 2,000 rows around a line over the size limit, and reports that line by number', async () => {
    const lines = ['imsi,tags'];
    for (let i = 0; i < 1000; i++) lines.push(`${imsi('0010131', i)},batch=a`);
    lines.push(`${imsi('0010131', 5000)},note=${'x'.repeat(70_000)}`); // line 1002, over admin.import.maxLineBytes
    for (let i = 1000; i < 2000; i++) lines.push(`${imsi('0010131', i)},batch=b`);
    const r = await importCsv(lines.join('\n') + '\n');
    expect(r.status).toBe(200);
    expect(r.body as Report).toMatchObject({ rows: 2001, created: 2000, failed: 1 });
    expect(r.body.errors).toEqual([{ line: 1002, message: 'line is longer than 65536 bytes; not read' }]);
    const rows = await stored('0010131');
    expect(rows).toHaveLength(2000);
    expect(rows.at(-1)!.imsi).toBe(imsi('0010131', 1999));
  });

  it('reports a line with a broken quote and reads the lines after it', async () => {
    const csv = ['imsi,tags', `${imsi('0010132', 1)},a=1`, `${imsi('0010132', 2)},x"y`, `${imsi('0010132', 3)},"a=1"b`, `"${imsi('0010132', 4)}","a=1"`, `${imsi('0010132', 5)},a=1`].join('\r\n');
    const r = await importCsv(csv);
    expect(r.body as Report).toMatchObject({ rows: 5, created: 3, failed: 2 });
    expect(r.body.errors.map((e: { line: number }) => e.line)).toEqual([3, 4]);
    expect(r.body.errors[0].message).toMatch(/^unreadable CSV: /);
    expect((await stored('0010132')).map((s) => s.imsi)).toEqual([imsi('0010132', 1), imsi('0010132', 4), imsi('0010132', 5)]);
  });

  it('takes constructor, toString and __proto__ as tag keys like any other', async () => {
    const sim = imsi('0010133', 1);
    const r = await importCsv(`imsi,tags\n${sim},constructor=a;toString=b;__proto__=c;site=n\n`);
    expect(r.body as Report).toMatchObject({ created: 1, failed: 0 });
    const view = await fetch(`${url}/v1/sims/${sim}`, { headers: { authorization: `Bearer ${token}` } }).then((res) => res.text());
    expect(JSON.parse(view).sim.tags).toEqual(JSON.parse('{"constructor":"a","toString":"b","__proto__":"c","site":"n"}'));
    expect(JSON.parse((await stored('0010133'))[0]!.tags)).toEqual(JSON.parse('{"constructor":"a","toString":"b","__proto__":"c","site":"n"}'));
    const listed = await fetch(`${url}/v1/sims?tag=constructor%3Da`, { headers: { authorization: `Bearer ${token}` } }).then((res) => res.json());
    expect((listed as { items: Array<{ imsi: string }> }).items.map((s) => s.imsi)).toEqual([sim]);
  });

  it('refuses a line that is not UTF-8 by number instead of storing U+FFFD, and a header that is not', async () => {
    const latin1 = (text: string) => Buffer.from(text, 'latin1');
    const body = Buffer.concat([
      Buffer.from(`imsi,tags\n${imsi('0010134', 1)},city=Zurich\n`),
      latin1(`${imsi('0010134', 2)},city=Z\u00fcrich\n`), // line 3: ü as one Latin-1 byte
      Buffer.from(`${imsi('0010134', 3)},city=Z\u00fcrich\n`), // line 4: ü in UTF-8
    ]);
    const r = await importCsv(body);
    expect(r.body as Report).toMatchObject({ rows: 3, created: 2, failed: 1 });
    expect(r.body.errors).toEqual([{ line: 3, message: expect.stringMatching(/not valid UTF-8/) }]);
    const rows = await stored('0010134');
    expect(rows.map((s) => s.imsi)).toEqual([imsi('0010134', 1), imsi('0010134', 3)]);
    expect(JSON.parse(rows[1]!.tags)).toEqual({ city: 'Z\u00fcrich' });
    expect(rows.some((s) => s.tags.includes('\ufffd'))).toBe(false);

    const header = await importCsv(latin1(`imsi,t\u00e4gs\n${imsi('0010134', 9)}\n`));
    expect(header.status).toBe(400);
    expect(header.body).toMatchObject({ error: 'invalid_csv', message: expect.stringMatching(/^line 1: line is not valid UTF-8/) });
  });
});
