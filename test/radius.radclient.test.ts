import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRadiusListener, type RadiusListener } from '../bridge/radius/listener.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import type { NetworkSession } from '../storage/network-sessions.ts';
import { findPeer } from './helpers/interop.ts';
import { tempDir } from './helpers/processes.ts';

// FreeRADIUS radclient (Debian freeradius-utils) plays the PGW. It loads /usr/share/freeradius/dictionary,
// which $INCLUDEs dictionary.3gpp, so 3GPP-IMSI / 3GPP-IMEISV / 3GPP-RAT-Type are known by name.
// 3GPP-IMEISV is a `string` there, so `0x...` would go out as text: raw TBCD octets are written with the
// numeric form Attr-26.10415.20 instead.
const radclient = findPeer('radclient', 'freeradius-utils');
const SECRET = 'interop-secret';
const IMSI_A = '001010000000101';
const IMSI_B = '001010000000102';
const IMSI_C = '001010000000103';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe.skipIf(!radclient)('radclient (FreeRADIUS) as the NAS', () => {
  let db: Db;
  let listener: RadiusListener;
  const events: Array<[string, NetworkSession, string]> = [];

  /** One radclient run; packets separated by blank lines are sent in order (-p 1). Async: the listener shares this process. */
  function send(packets: string[][], opts: { secret?: string; retries?: number } = {}): Promise<Run> {
    const args = ['-x', '-p', '1', '-r', String(opts.retries ?? 2), '-t', '1', `127.0.0.1:${listener.port}`, 'acct', opts.secret ?? SECRET];
    return new Promise((resolve, reject) => {
      const child = spawn(radclient!, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.end(packets.map((lines) => lines.join('\n')).join('\n\n') + '\n');
    });
  }

  const start = (ip: string, session: string, imsi: string, imeiLine: string, status = 'Start') => [
    `Acct-Status-Type = ${status}`,
    `Framed-IP-Address = ${ip}`,
    `Acct-Session-Id = "${session}"`,
    'NAS-IP-Address = 192.0.2.10',
    'NAS-Identifier = "pgw-1"',
    `Calling-Station-Id = "3361234${ip.split('.').at(-1)}"`,
    `3GPP-IMSI = "${imsi}"`,
    imeiLine,
    '3GPP-RAT-Type = 8',
    '3GPP-Charging-ID = 4000000001',
  ];

  beforeAll(async () => {
    db = openDatabase({ file: join(tempDir('radius-radclient'), 'db.sqlite'), synchronous: 'full' });
    listener = await startRadiusListener({ host: '127.0.0.1', port: 0, clients: [{ address: '127.0.0.0/29', secret: SECRET }], db });
    listener.on('session-start', (s, cause) => events.push(['start', s, cause]));
    listener.on('session-end', (s, cause) => events.push(['end', s, cause]));
  });

  afterAll(async () => {
    await listener?.close();
    db?.close();
  });

  it('records Starts for several IPs, with the IMEI normalised from text IMEISV, TBCD octets and a spare-0 IMEI', async () => {
    const run = await send([
      start('127.0.0.2', 'sess-2', IMSI_A, '3GPP-IMEISV = "4901542032375101"'),
      start('127.0.0.3', 'sess-3', IMSI_B, 'Attr-26.10415.20 = 0x9410450223731510'),
      start('127.0.0.4', 'sess-4', IMSI_C, '3GPP-IMEISV = "353456789012340"'),
    ]);
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect(run.stdout.match(/Received Accounting-Response/g)).toHaveLength(3);
    expect(listener.sessions.byIp('127.0.0.2')).toMatchObject({
      imsi: IMSI_A,
      imei: '490154203237518',
      msisdn: '33612342',
      ratType: 8,
      nasIp: '192.0.2.10',
      nasIdentifier: 'pgw-1',
      acctSessionId: 'sess-2',
      chargingId: 4000000001,
      updates: 1,
    });
    expect(listener.sessions.byIp('127.0.0.3')).toMatchObject({ imsi: IMSI_B, imei: '490154203237518' });
    expect(listener.sessions.byIp('127.0.0.4')).toMatchObject({ imsi: IMSI_C, imei: '353456789012348' });
    expect(events.map(([kind, s, cause]) => [kind, s.ip, cause])).toEqual([
      ['start', '127.0.0.2', 'start'],
      ['start', '127.0.0.3', 'start'],
      ['start', '127.0.0.4', 'start'],
    ]);
  });

  it('refreshes on Interim-Update', async () => {
    const before = listener.sessions.byIp('127.0.0.2')!;
    const run = await send([start('127.0.0.2', 'sess-2', IMSI_A, '3GPP-IMEISV = "4901542032375101"', 'Interim-Update')]);
    expect(run.code, run.stdout + run.stderr).toBe(0);
    const after = listener.sessions.byIp('127.0.0.2')!;
    expect(after.updates).toBe(2);
    expect(after.startedAt).toBe(before.startedAt);
    expect(after.updatedAt).toBeGreaterThanOrEqual(before.updatedAt);
  });

  it('removes on Stop only the session with the matching Acct-Session-Id', async () => {
    const stop = (session: string) => ['Acct-Status-Type = Stop', 'Framed-IP-Address = 127.0.0.3', `Acct-Session-Id = "${session}"`, `3GPP-IMSI = "${IMSI_B}"`];
    events.length = 0;
    expect((await send([stop('someone-else')])).code).toBe(0);
    expect(listener.sessions.byIp('127.0.0.3')).toBeDefined();
    expect((await send([stop('sess-3')])).code).toBe(0);
    expect(listener.sessions.byIp('127.0.0.3')).toBeUndefined();
    expect(events.map(([kind, s, cause]) => [kind, s.ip, s.imsi, cause])).toEqual([['end', '127.0.0.3', IMSI_B, 'stop']]);
  });

  it('evicts the holder of an IP when a new Start arrives for it, and says so', async () => {
    events.length = 0;
    const run = await send([start('127.0.0.2', 'sess-2b', IMSI_C, '3GPP-IMEISV = "3534567890123401"')]);
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect(listener.sessions.byIp('127.0.0.2')).toMatchObject({ imsi: IMSI_C, acctSessionId: 'sess-2b', imei: '353456789012348' });
    expect(events.map(([kind, s, cause]) => [kind, s.ip, s.imsi, cause])).toEqual([
      ['end', '127.0.0.2', IMSI_A, 'evicted'],
      ['start', '127.0.0.2', IMSI_C, 'start'],
    ]);
  });

  it('gets no answer with the wrong secret, or from a source outside the client list', async () => {
    const before = listener.counters.dropped;
    const badAuth = before.bad_authenticator ?? 0;
    const unknown = before.unknown_client ?? 0;
    const wrong = await send([start('127.0.0.5', 'x', IMSI_A, '3GPP-IMEISV = "4901542032375101"')], { secret: 'not-it', retries: 1 });
    expect(wrong.code).not.toBe(0);
    const outsider = await send([[...start('127.0.0.5', 'y', IMSI_A, '3GPP-IMEISV = "4901542032375101"'), 'Packet-Src-IP-Address = 127.0.0.9']], { retries: 1 });
    expect(outsider.code).not.toBe(0);
    expect(listener.sessions.byIp('127.0.0.5')).toBeUndefined();
    expect(listener.counters.dropped.bad_authenticator).toBe(badAuth + 1);
    expect(listener.counters.dropped.unknown_client).toBe(unknown + 1);
  });

  it('clears the NAS on Accounting-On', async () => {
    events.length = 0;
    const run = await send([['Acct-Status-Type = Accounting-On', 'NAS-IP-Address = 192.0.2.10', 'NAS-Identifier = "pgw-1"']]);
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect(listener.sessions.count()).toBe(0);
    expect(events.map(([kind, s, cause]) => [kind, s.ip, cause]).sort()).toEqual([
      ['end', '127.0.0.2', 'nas_on'],
      ['end', '127.0.0.4', 'nas_on'],
    ]);
  });
});
