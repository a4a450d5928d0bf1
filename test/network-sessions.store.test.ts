// The IP → identity table's rules (RADIUS accounting, RFC 2866), against SQLite and PostgreSQL alike,
// each change applied the way the RADIUS listener applies it (applyAll).
import { describe, expect, it } from 'vitest';
import type { ChangeResult, SessionChange, SessionReport } from '../storage/network-sessions.ts';
import { storeDialects } from './helpers/store-dialects.ts';

const IMSI = '001010000000001';
const report = (ip: string, acctSessionId: string, imsi = IMSI, nasIp = '192.0.2.1'): SessionReport => ({ ip, imsi, acctSessionId, nasIp });

describe.each(storeDialects())('network session table on $name', (dialect) => {
  async function setup(start = 1_000, replayWindowMs?: number) {
    let now = start;
    const s = (await dialect.fresh()).networkSessions(() => now, replayWindowMs);
    const one = async (change: SessionChange): Promise<ChangeResult> => {
      const [r] = await s.applyAll([change]);
      if (r instanceof Error) throw r;
      return r!;
    };
    return {
      s,
      tick: (ms: number) => (now += ms),
      now: () => now,
      start: (r: SessionReport) => one({ kind: 'start', report: r }),
      interim: (r: SessionReport) => one({ kind: 'interim', report: r }),
      stop: (ip: string, id: string, nasIp = '192.0.2.1') => one({ kind: 'stop', ip, acctSessionId: id, nasIp }),
      clearNas: (nasIp: string, nasIdentifier: string | null) => one({ kind: 'nas_on', nasIp, nasIdentifier }),
      byIp: async (ip: string) => (await s.list()).find((x) => x.ip === ip),
    };
  }

  it('evicts the previous holder of an IP on Start, and returns it', async () => {
    const t = await setup();
    expect((await t.start(report('10.0.0.1', 'a'))).started?.cause).toBe('start');
    const r = await t.start(report('10.0.0.1', 'b', '001010000000002'));
    expect(r.ended.map((e) => [e.session.acctSessionId, e.cause])).toEqual([['a', 'evicted']]);
    expect((await t.byIp('10.0.0.1'))?.imsi).toBe('001010000000002');
    expect(await t.s.count()).toBe(1);
  });

  it('opens a session once when the same Start arrives several times at once (accounting sent to several servers)', async () => {
    const t = await setup();
    // Every connection of the pool open first: a connection still being opened would keep the Starts apart.
    await Promise.all(Array.from({ length: 8 }, (_, i) => t.start(report(`10.0.1.${i}`, `w${i}`))));
    const results = await Promise.all(Array.from({ length: 8 }, () => t.s.applyAll([{ kind: 'start', report: report('10.0.0.9', 'x') }])));
    const flat = results.flat();
    expect(flat.filter((r) => r instanceof Error)).toEqual([]);
    expect(flat.filter((r) => !(r instanceof Error) && r.started)).toHaveLength(1);
    expect(await t.s.count()).toBe(9);
  });

  it('removes on Stop only the session with that id', async () => {
    const t = await setup();
    await t.start(report('10.0.0.1', 'a'));
    expect((await t.stop('10.0.0.1', 'old')).ended).toEqual([]);
    expect((await t.stop('10.0.0.2', 'a')).ended).toEqual([]);
    expect((await t.stop('10.0.0.1', 'a')).ended.map((e) => e.cause)).toEqual(['stop']);
    expect(await t.byIp('10.0.0.1')).toBeUndefined();
  });

  it('does not re-open a stopped session from a replayed Start or Interim-Update within the replay window', async () => {
    const t = await setup(1_000, 10_000);
    await t.start(report('10.0.0.1', 'a'));
    await t.stop('10.0.0.1', 'a');
    t.tick(9_000);
    expect((await t.start(report('10.0.0.1', 'a'))).ignored).toBe('stopped_session');
    expect((await t.interim(report('10.0.0.1', 'a'))).ignored).toBe('stopped_session');
    expect(await t.byIp('10.0.0.1')).toBeUndefined();
    // Another NAS may reuse the id; a new id on the same IP is a new session.
    expect((await t.start(report('10.0.0.1', 'a', IMSI, '192.0.2.2'))).started).toBeDefined();
    expect((await t.start(report('10.0.0.1', 'b'))).started).toBeDefined();
    t.tick(2_000);
    expect(await t.s.forgetOldStops()).toBe(1);
  });

  it('honours Event-Timestamp: news older than the replay window or than the session holding the IP changes nothing', async () => {
    const t = await setup(100_000, 10_000);
    expect((await t.start({ ...report('10.0.0.1', 'a'), eventTime: t.now() - 20_000 })).ignored).toBe('stale_event');
    expect((await t.start({ ...report('10.0.0.1', 'b', '001010000000002'), eventTime: t.now() - 1_000 })).started).toBeDefined();
    t.tick(5_000);
    // A Start from before b began (delayed or replayed) does not evict b.
    expect((await t.start({ ...report('10.0.0.1', 'c'), eventTime: t.now() - 8_000 })).ignored).toBe('stale_event');
    expect((await t.byIp('10.0.0.1'))?.acctSessionId).toBe('b');
    expect(await t.interim({ ...report('10.0.0.1', 'b', '001010000000002'), eventTime: t.now() - 8_000 })).toEqual({ ended: [] });
    expect((await t.start({ ...report('10.0.0.1', 'd'), eventTime: t.now() })).started).toBeDefined();
  });

  it('refreshes on Interim-Update, keeping what the update omits, and creates when the Start was missed', async () => {
    const t = await setup();
    await t.start({ ...report('10.0.0.1', 'a'), imei: '490154203237518', ratType: 6 });
    t.tick(500);
    expect(await t.interim({ ...report('10.0.0.1', 'a'), ratType: 8 })).toEqual({ ended: [] });
    expect(await t.byIp('10.0.0.1')).toMatchObject({ imei: '490154203237518', ratType: 8, startedAt: 1_000, updatedAt: 1_500, updates: 2 });
    t.tick(1);
    expect((await t.interim(report('10.0.0.2', 'c'))).started?.cause).toBe('interim');
    expect((await t.s.byImsi(IMSI)).map((x) => x.ip)).toEqual(['10.0.0.2', '10.0.0.1']);
  });

  it('clears a NAS on Accounting-On/Off and expires idle sessions', async () => {
    const t = await setup();
    await t.start(report('10.0.0.1', 'a', IMSI, '192.0.2.1'));
    await t.start(report('10.0.0.2', 'b', IMSI, '192.0.2.2'));
    await t.start({ ...report('10.0.0.3', 'c', IMSI, '192.0.2.1'), nasIdentifier: 'pgw-2' });
    expect((await t.clearNas('192.0.2.1', 'pgw-1')).ended).toEqual([]);
    expect((await t.clearNas('192.0.2.1', null)).ended.map((e) => e.session.ip).sort()).toEqual(['10.0.0.1', '10.0.0.3']);
    t.tick(10_000);
    await t.start(report('10.0.0.4', 'd'));
    expect((await t.s.expire(5_000)).map((e) => [e.session.ip, e.cause])).toEqual([['10.0.0.2', 'expired']]);
    expect((await t.s.list()).map((x) => x.ip)).toEqual(['10.0.0.4']);
  });
});
