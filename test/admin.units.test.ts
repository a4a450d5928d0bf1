import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { FailureLimiter } from '../admin/auth/failure-limiter.ts';
import { parseTags } from '../admin/csv-import.ts';
import { csvLines, type CsvLine } from '../admin/csv-lines.ts';
import { maskIdentifiers, maskingLoggerOptions, maskPath } from '../admin/mask.ts';
import { startRetention } from '../admin/retention.ts';
import { retentionSection } from '../config/admin.ts';
import { openDatabase } from '../storage/db.ts';
import { sqliteStores } from '../storage/index.ts';

describe('identifier masking for logs', () => {
  it('masks IMSI, IMEI, ICCID and MSISDN values at any depth, and thing names, and leaves the rest', () => {
    const masked = maskIdentifiers({
      imsi: '001010000000001',
      thing: 'sim-001010000000001',
      detail: { imei: '490154203237518', seen: null, bound: true, msisdn: '+15550001234' },
      count: 3,
      ip: '10.0.0.1',
    });
    expect(masked).toEqual({
      imsi: '00101********01',
      thing: 'sim-00101********01',
      detail: { imei: '49015********18', seen: null, bound: true, msisdn: '+1555*****34' },
      count: 3,
      ip: '10.0.0.1',
    });
    expect(maskIdentifiers(masked)).toEqual(masked);
    expect(maskPath('/v1/sims/001010000000001/imei')).toBe('/v1/sims/00101********01/imei');
  });

  it('plugs into pino so every line and child binding is masked, or none when disabled', () => {
    // Child bindings go through serializers, not formatters: both are needed.
    const lines: string[] = [];
    const sink = new Writable({ write: (c, _e, done) => (lines.push(String(c)), done()) });
    const log = pino({ base: undefined, ...maskingLoggerOptions(true) }, sink);
    log.child({ imsi: '001010000000001', thing: 'sim-001010000000001' }).info({ imei: '490154203237518', detail: { seen: '353456780000029' } }, 'bound');
    pino({ base: undefined, ...maskingLoggerOptions(false) }, sink).info({ imsi: '001010000000001' }, 'raw');
    expect(lines[0]).toContain('"imsi":"00101********01"');
    expect(lines[0]).toContain('"imei":"49015********18"');
    expect(lines[0]).toContain('"seen":"35345********29"');
    expect(lines[0]).not.toContain('001010000000001');
    expect(lines[1]).toContain('"imsi":"001010000000001"');
  });

  it('masks thing names and topics wherever they appear: filters, topics, error strings and Error objects', () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (c, _e, done) => (lines.push(String(c)), done()) });
    const log = pino({ base: undefined, ...maskingLoggerOptions(true) }, sink);
    const filter = '$aws/things/sim-999990000000001/shadow/#';
    log.info({ filter, err: `cannot subscribe to ${filter}` }, 'refused');
    log.warn({ topic: 'devices/sim-999990000000001/t', err: new Error('publish of 131073 bytes to devices/sim-999990000000001/t refused (IMSI 999990000000001)') }, 'failed');
    log.child({ filter: 'a/999990000000001/#' }).info({ detail: { reason: 'bound to 490154203237518' } }, 'nested');
    expect(lines.join('')).not.toMatch(/999990000000001|490154203237518/);
    expect(JSON.parse(lines[0]!)).toMatchObject({ filter: '$aws/things/sim-99999********01/shadow/#', err: 'cannot subscribe to $aws/things/sim-99999********01/shadow/#' });
    const err = JSON.parse(lines[1]!).err;
    expect(err).toMatchObject({ type: 'Error', message: 'publish of 131073 bytes to devices/sim-99999********01/t refused (IMSI 99999********01)' });
    expect(err.stack).toContain('sim-99999********01');
    expect(JSON.parse(lines[2]!)).toMatchObject({ filter: 'a/99999********01/#', detail: { reason: 'bound to 49015********18' } });
  });
});

describe('failed sign-in limiter', () => {
  it('blocks an address at the limit until its window ends, per address', () => {
    let now = 0;
    const limiter = new FailureLimiter(3, 60_000, () => now);
    expect(limiter.fail('a')).toBe(false);
    expect(limiter.fail('a')).toBe(false);
    expect(limiter.blockedFor('a')).toBe(0);
    expect(limiter.fail('a')).toBe(true);
    now = 10_000;
    expect(limiter.blockedFor('a')).toBe(50_000);
    expect(limiter.blockedFor('b')).toBe(0);
    now = 60_000;
    expect(limiter.blockedFor('a')).toBe(0);
    expect(limiter.fail('a')).toBe(false);
  });
});

describe('import tags', () => {
  it('reads k=v;k2=v2 and explains what is wrong', () => {
    expect(parseTags('site=north; rack=3;')).toEqual({ site: 'north', rack: '3' });
    expect(parseTags('a=b=c')).toEqual({ a: 'b=c' });
    expect(parseTags('novalue')).toMatch(/no "="/);
    expect(parseTags('a=1;a=2')).toMatch(/twice/);
    expect(parseTags('bad key=1')).toMatch(/tag key/);
  });

  it('takes the names of Object.prototype members as plain keys', () => {
    const tags = parseTags('constructor=a;toString=b;__proto__=c;hasOwnProperty=d');
    expect(tags).toEqual({ constructor: 'a', toString: 'b', ['__proto__']: 'c', hasOwnProperty: 'd' });
    expect(Object.keys(tags)).toEqual(['constructor', 'toString', '__proto__', 'hasOwnProperty']);
    expect(JSON.parse(JSON.stringify(tags))).toHaveProperty(['__proto__'], 'c');
    expect(parseTags('__proto__=1;__proto__=2')).toMatch(/"__proto__" is given twice/);
  });
});

describe('import lines', () => {
  const read = async (chunks: Buffer[], max = 64) => {
    const out: CsvLine[] = [];
    for await (const l of csvLines(chunks, max)) out.push(l);
    return out;
  };
  const file = Buffer.concat([
    Buffer.from([0xef, 0xbb, 0xbf]),
    Buffer.from('imsi,tags\r\n\r\n001,city=Z\u00fcrich\n'),
    Buffer.from(`002,${'x'.repeat(80)}\n`),
    Buffer.from('003,caf\xe9\n', 'latin1'),
    Buffer.from(' "004" , "a=1,b" \n005,"x"y\n006'),
  ]);
  const expected: CsvLine[] = [
    { line: 1, fields: ['imsi', 'tags'] },
    { line: 3, fields: ['001', 'city=Z\u00fcrich'] },
    { line: 4, problem: 'line is longer than 64 bytes; not read' },
    { line: 5, problem: 'line is not valid UTF-8: save the file as UTF-8 and import it again' },
    { line: 6, fields: ['004', 'a=1,b'] },
    { line: 7, problem: expect.stringMatching(/^unreadable CSV: /) as unknown as string },
    { line: 8, fields: ['006'] },
  ];

  it('numbers lines as an editor does and reports each bad one on its own', async () => {
    expect(await read([file])).toEqual(expected);
  });

  it('reads the same whatever the chunks (a UTF-8 character or CRLF split between two)', async () => {
    expect(await read([...file].map((b) => Buffer.from([b])))).toEqual(expected);
  });
});

describe('retention', () => {
  it('deletes only rows past their age, and keeps everything when an age is 0', async () => {
    const db = openDatabase({ file: ':memory:', synchronous: 'normal' });
    const day = 86_400_000;
    const insert = db.prepare("INSERT INTO audit (at, imsi, kind, detail) VALUES (?, NULL, 'k', '{}')");
    for (let i = 0; i < 12_000; i++) insert.run(Date.now() - 40 * day);
    insert.run(Date.now() - 5 * day);
    const log = pino({ level: 'silent' });
    const keep = startRetention(sqliteStores(db).retention, retentionSection.parse({ enabled: false, auditDays: 0 }), log);
    expect(await keep.runOnce()).toEqual({ audit: 0, deadLetters: 0, networkSessions: 0 });
    const job = startRetention(sqliteStores(db).retention, retentionSection.parse({ enabled: false, auditDays: 30 }), log);
    expect((await job.runOnce()).audit).toBe(12_000);
    expect(db.prepare('SELECT count(*) FROM audit').pluck().get()).toBe(1);
    db.close();
  });

  it('refuses a schedule that is not a cron expression', () => {
    expect(retentionSection.safeParse({ schedule: 'every night' }).success).toBe(false);
    expect(retentionSection.parse({}).schedule).toBe('23 4 * * *');
  });
});
