import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRadiusListener, type RadiusListener } from '../bridge/radius/listener.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import { findPeer } from './helpers/interop.ts';
import { tempDir } from './helpers/processes.ts';

// A captured, validly signed accounting record played back later (radclient sends the very same
// attributes, signed with the NAS's secret, as an attacker replaying a capture would).
const radclient = findPeer('radclient', 'freeradius-utils');
const SECRET = 'replay-secret';
const IMSI = '001010000000301';
const REPLY_CACHE_MS = 100;

describe.skipIf(!radclient)('RADIUS replays (radclient as the NAS)', () => {
  let db: Db;
  let listener: RadiusListener;

  /** Sends one record; resolves true when an Accounting-Response came back. */
  function send(lines: string[]): Promise<boolean> {
    const args = ['-x', '-r', '1', '-t', '1', `127.0.0.1:${listener.port}`, 'acct', SECRET];
    return new Promise((resolve, reject) => {
      const child = spawn(radclient!, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.on('error', reject);
      child.on('close', () => resolve(/Received Accounting-Response/.test(out)));
      child.stdin.end(lines.join('\n') + '\n');
    });
  }
  const record = (status: string, ip: string, session: string, eventTime?: number) => [
    `Acct-Status-Type = ${status}`,
    `Framed-IP-Address = ${ip}`,
    `Acct-Session-Id = "${session}"`,
    'NAS-IP-Address = 192.0.2.10',
    `3GPP-IMSI = "${IMSI}"`,
    ...(eventTime === undefined ? [] : [`Event-Timestamp = ${Math.floor(eventTime / 1000)}`]),
  ];

  beforeAll(async () => {
    db = openDatabase({ file: join(tempDir('radius-replay'), 'db.sqlite'), synchronous: 'full' });
    listener = await startRadiusListener({ host: '127.0.0.1', port: 0, clients: [{ address: '127.0.0.1', secret: SECRET }], db, replyCacheMs: REPLY_CACHE_MS, sessionTimeoutMs: 3600_000 });
  });

  afterAll(async () => {
    await listener?.close();
    db?.close();
  });

  it('does not re-open a stopped session when its Start is replayed after the reply cache has expired', async () => {
    const start = record('Start', '10.20.0.1', 'replayed-1');
    expect(await send(start)).toBe(true);
    expect(listener.sessions.byIp('10.20.0.1')?.imsi).toBe(IMSI);
    expect(await send(record('Stop', '10.20.0.1', 'replayed-1'))).toBe(true);
    expect(listener.sessions.byIp('10.20.0.1')).toBeUndefined();
    await new Promise((r) => setTimeout(r, REPLY_CACHE_MS * 3));
    // Answered (so a genuine late retransmission stops), but not applied.
    expect(await send(start)).toBe(true);
    expect(await send(record('Interim-Update', '10.20.0.1', 'replayed-1'))).toBe(true);
    expect(listener.sessions.byIp('10.20.0.1')).toBeUndefined();
    expect(listener.counters.ignored.stopped_session).toBe(2);
  });

  it('ignores a Start whose Event-Timestamp is older than the replay window', async () => {
    expect(await send(record('Start', '10.20.0.2', 'old-1', Date.now() - 2 * 3600_000))).toBe(true);
    expect(listener.sessions.byIp('10.20.0.2')).toBeUndefined();
    expect(listener.counters.ignored.stale_event).toBe(1);
  });

  it('does not let a Start stamped before the current holder of an IP began evict it', async () => {
    const t = Date.now() - 60_000;
    expect(await send(record('Start', '10.20.0.3', 'holder', t))).toBe(true);
    expect(await send(record('Start', '10.20.0.3', 'earlier', t - 30_000))).toBe(true);
    expect(listener.sessions.byIp('10.20.0.3')?.acctSessionId).toBe('holder');
    expect(await send(record('Start', '10.20.0.3', 'later', t + 30_000))).toBe(true);
    expect(listener.sessions.byIp('10.20.0.3')?.acctSessionId).toBe('later');
  });
});
