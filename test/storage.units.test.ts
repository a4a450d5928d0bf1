// The stores' own rules, against SQLite in a temp directory and PostgreSQL in a throw-away server
// (test/helpers/store-dialects.ts): one test, both dialects.
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { fleetStats } from '../admin/fleet-stats.ts';
import { AUDIT_KINDS, isAuditKind } from '../storage/audit.ts';
import { GATEWAY_OUTBOX_KEY } from '../storage/events.ts';
import { certificateState } from '../storage/credentials.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import type { CommitWriter } from '../storage/outbox-commit.ts';
import { promised } from '../storage/promised.ts';
import { storeDialects, type StoreFixture } from './helpers/store-dialects.ts';

const DAY = 86_400_000;
const migrations = fileURLToPath(new URL('../storage/migrations/', import.meta.url));
let open: Db[] = [];

afterEach(() => {
  for (const db of open) db.close();
  open = [];
});

const IMSI = '001010000000901';
const OTHER = '001010000000902';

/** Queues a message as the outbox writer does (in this thread): the device's, or the gateway's own. */
async function queue(f: StoreFixture, imsi: string, topic: string, receivedAt: number, system = false): Promise<void> {
  await f.commit({ inserts: [{ imsi, deviceTopic: topic, payload: Buffer.from('x'), qos: 1, receivedAt, system }], deletes: [] });
}

describe.each(storeDialects())('stores on $name', (dialect) => {
  const fresh = () => dialect.fresh();

  describe('audit log queries', () => {
    it('filters by SIM, several kinds and a time range, newest first, and pages on with nextBefore', async () => {
      const { stores } = await fresh();
      for (let i = 0; i < 5; i++) await stores.audit.record('imei_bound', IMSI, { i });
      await stores.audit.record('sim_created', IMSI);
      await stores.audit.record('imei_bound', OTHER);
      await stores.audit.record('admin_auth_failed', null);

      const first = await stores.audit.query({ imsi: IMSI, kinds: ['imei_bound', 'sim_created'], limit: 4 });
      expect(first.items.map((e) => e.kind)).toEqual(['sim_created', 'imei_bound', 'imei_bound', 'imei_bound']);
      expect(first.items[1]!.detail).toEqual({ i: 4 });
      expect(first.nextBefore).toBe(first.items[3]!.id);
      const second = await stores.audit.query({ imsi: IMSI, kinds: ['imei_bound', 'sim_created'], limit: 4, before: first.nextBefore! });
      expect(second.items.map((e) => e.detail)).toEqual([{ i: 1 }, { i: 0 }]);
      expect(second.nextBefore).toBeNull();

      expect((await stores.audit.query({ kinds: ['admin_auth_failed'] })).items).toMatchObject([{ imsi: null }]);
      expect((await stores.audit.query({ since: Date.now() + 1000 })).items).toEqual([]);
      expect((await stores.audit.query({ until: 1 })).items).toEqual([]);
      expect((await stores.audit.query()).items).toHaveLength(8);
    });
  });

  describe('outbox figures for the admin surface', () => {
    it('sums the queue, tells a SIM\'s own messages from the gateway\'s, and counts recent dead letters', async () => {
      const f = await fresh();
      const { stores } = f;
      expect(await stores.outboxStats.summary()).toEqual({ depth: 0, sims: 0, oldestReceivedAt: null, events: 0 });
      await queue(f, IMSI, 'telemetry', 1000);
      await queue(f, IMSI, '$aws/things/sim-901/shadow/update', 3000, true);
      await queue(f, OTHER, 'telemetry', 2000);
      // Lifecycle events wait under the reserved key: neither a SIM nor device depth, counted on their own.
      await queue(f, GATEWAY_OUTBOX_KEY, 'simbridge/edge/events/first_contact', 500, true);
      await queue(f, GATEWAY_OUTBOX_KEY, 'simbridge/edge/events/imei_mismatch', 600, true);
      expect(await stores.outboxStats.summary()).toEqual({ depth: 3, sims: 2, oldestReceivedAt: 1000, events: 2 });
      expect(await fleetStats(stores, 0)).toMatchObject({ outbox: { depth: 3, sims: 2 }, events: { queued: 2 } });
      expect(await stores.outboxStats.ofSim(IMSI)).toEqual({ depth: 2, oldestReceivedAt: 1000, newestFromDevice: 1000 });
      expect(await stores.outboxStats.ofSim('001010000000999')).toEqual({ depth: 0, oldestReceivedAt: null, newestFromDevice: null });

      const dead = (at: number) => f.sql("INSERT INTO dead_letters (imsi, device_topic, payload, received_at, reason, failed_at) VALUES (?, 't', ?, 0, 'r', ?)", IMSI, Buffer.from([0]), at);
      await dead(Date.now() - 2 * DAY);
      await dead(Date.now());
      expect(await stores.outboxStats.deadLetters(Date.now() - DAY)).toEqual({ total: 2, recent: 1 });
    });
  });

  describe('credential figures', () => {
    it('count SIMs with a certificate in use and SIMs being vended', async () => {
      const f = await fresh();
      for (const imsi of [IMSI, OTHER]) await f.stores.sims.register({ imsi, group: 'default', thingName: `sim-${imsi}` });
      const row = (imsi: string, step: string) =>
        f.sql("INSERT INTO credentials (imsi, thing_name, step, key_alg, key_enc, csr_pem, created_at, updated_at) VALUES (?, 't', ?, 'ec', ?, 'csr', 0, 0)", imsi, step, Buffer.from([0]));
      await row(IMSI, 'ready');
      await row(IMSI, 'csr_sent'); // rotating
      await row(OTHER, 'retired');
      expect(await f.stores.credentialReads.countByState()).toEqual({ ready: 1, vending: 1 });
      expect((await f.stores.credentialReads.history(IMSI)).map((r) => r.step)).toEqual(['ready', 'csr_sent']);
    });
  });

  describe('retention', () => {
    it('deletes at most a chunk of rows past their age, and leaves a target without an age column alone', async () => {
      const f = await fresh();
      const { stores } = f;
      for (let i = 0; i < 5; i++) await f.sql("INSERT INTO audit (at, imsi, kind, detail) VALUES (?, NULL, 'k', '{}')", Date.now() - 40 * DAY);
      await f.sql("INSERT INTO audit (at, imsi, kind, detail) VALUES (?, NULL, 'k', '{}')", Date.now());
      const cutoff = Date.now() - 30 * DAY;
      expect(await stores.retention.purgeBefore('audit', cutoff, 3)).toBe(3);
      expect(await stores.retention.purgeBefore('audit', cutoff, 3)).toBe(2);
      expect(await stores.retention.purgeBefore('audit', cutoff, 3)).toBe(0);
      expect((await stores.audit.query()).items).toHaveLength(1);
      // network_sessions has no ended_at here: live sessions are never aged out.
      await stores.networkSessions.applyAll([{ kind: 'start', report: { ip: '10.0.0.1', imsi: IMSI, nasIp: '10.9.9.9', acctSessionId: 'a' } }]);
      expect(await stores.retention.purgeBefore('networkSessions', Date.now() + DAY, 10)).toBe(0);
      expect(await stores.networkSessions.count()).toBe(1);
    });
  });

  describe('meta', () => {
    it('keeps the first value written under a key', async () => {
      const { stores } = await fresh();
      expect(await stores.meta.get('k')).toBeUndefined();
      await stores.meta.putIfAbsent('k', Buffer.from('one'));
      await stores.meta.putIfAbsent('k', Buffer.from('two'));
      expect((await stores.meta.get('k'))?.toString()).toBe('one');
      await stores.meta.put('k', Buffer.from('three'));
      expect((await stores.meta.get('k'))?.toString()).toBe('three');
    });
  });

  describe('network sessions in one transaction', () => {
    it('apply a batch of changes, keeping one that failed from taking the others down', async () => {
      const { stores } = await fresh();
      const nasIp = '10.9.9.9';
      const outcomes = await stores.networkSessions.applyAll([
        { kind: 'start', report: { ip: '10.0.0.1', imsi: IMSI, nasIp, acctSessionId: 'a' } },
        { kind: 'start', report: { ip: '10.0.0.9', imsi: null as unknown as string, nasIp, acctSessionId: 'bad' } },
        { kind: 'start', report: { ip: '10.0.0.2', imsi: OTHER, nasIp, acctSessionId: 'b' } },
        { kind: 'stop', ip: '10.0.0.1', acctSessionId: 'a', nasIp: '10.9.9.9' },
      ]);
      expect(outcomes.map((o) => (o instanceof Error ? 'error' : [o.started?.session.ip ?? null, o.ended.map((e) => e.cause)]))).toEqual([
        ['10.0.0.1', []],
        'error',
        ['10.0.0.2', []],
        [null, ['stop']],
      ]);
      // One commit for the batch: the others hold.
      expect((await stores.networkSessions.list()).map((s) => s.ip)).toEqual(['10.0.0.2']);
      expect(await stores.networkSessions.count()).toBe(1);
      expect((await stores.networkSessions.byImsi(OTHER)).map((s) => s.ip)).toEqual(['10.0.0.2']);
    });

    it('refresh a session on Interim-Update, evict the IP\'s holder on a new Start, and ignore a replayed Start of a stopped session', async () => {
      const { stores } = await fresh();
      const nasIp = '10.9.9.9';
      const start = (imsi: string, id: string) => ({ kind: 'start' as const, report: { ip: '10.0.0.5', imsi, nasIp, acctSessionId: id } });
      await stores.networkSessions.applyAll([start(IMSI, 's1'), { kind: 'interim', report: { ...start(IMSI, 's1').report, imei: '490154203237518' } }]);
      expect(await stores.networkSessions.byImsi(IMSI)).toMatchObject([{ updates: 2, imei: '490154203237518' }]);
      const [taken] = await stores.networkSessions.applyAll([start(OTHER, 's2')]);
      expect(taken).toMatchObject({ started: { session: { imsi: OTHER } }, ended: [{ cause: 'evicted', session: { imsi: IMSI } }] });
      const [, replayed] = await stores.networkSessions.applyAll([{ kind: 'stop', ip: '10.0.0.5', acctSessionId: 's2', nasIp }, start(OTHER, 's2')]);
      expect(replayed).toEqual({ ended: [], ignored: 'stopped_session' });
      expect(await stores.networkSessions.count()).toBe(0);
      const [, cleared] = await stores.networkSessions.applyAll([start(IMSI, 's3'), { kind: 'nas_off', nasIp, nasIdentifier: null }]);
      expect(cleared).toMatchObject({ ended: [{ cause: 'nas_off', session: { imsi: IMSI, acctSessionId: 's3' } }] });
    });
  });

  describe('online', () => {
    it('is one rule: the listing, the counts and the single-SIM answer agree for every kind of activity', async () => {
      const f = await fresh();
      const { stores } = f;
      const now = Date.now();
      const since = now - 900_000;
      const sims = {
        session: '001010000000911', // a network session, nothing sent
        seen: '001010000000912', // last_seen_at within the window
        queued: '001010000000913', // a message still in the outbox, last_seen_at not written yet
        gatewayOnly: '001010000000914', // only the gateway's own shadow update queued
        stale: '001010000000915', // sent something long ago
      };
      for (const imsi of Object.values(sims)) await stores.sims.register({ imsi, group: 'default', thingName: `sim-${imsi}` });
      await stores.networkSessions.applyAll([{ kind: 'start', report: { ip: '10.0.0.11', imsi: sims.session, nasIp: '10.9.9.9', acctSessionId: 's' } }]);
      await f.markSeen(sims.seen, now - 1000);
      await queue(f, sims.queued, 'telemetry', now - 1000);
      await f.sql('UPDATE sims SET last_seen_at = NULL WHERE imsi = ?', sims.queued);
      await queue(f, sims.gatewayOnly, '$aws/things/sim-914/shadow/update', now - 1000, true);
      await f.markSeen(sims.stale, now - 3_600_000);

      const expected = { session: true, seen: true, queued: true, gatewayOnly: false, stale: false };
      const listed = new Map((await stores.sims.list({}, { limit: 100, onlineSince: since })).items.map((s) => [s.imsi, s.online]));
      for (const [name, imsi] of Object.entries(sims)) {
        const want = expected[name as keyof typeof expected];
        expect([name, listed.get(imsi), await stores.sims.isOnline(imsi, since)]).toEqual([name, want, want]);
      }
      const online = (await stores.sims.list({ online: true }, { limit: 100, onlineSince: since })).items.map((s) => s.imsi);
      expect(online).toEqual([sims.session, sims.seen, sims.queued]);
      expect(await stores.sims.counts(since)).toMatchObject([{ group: 'default', total: 5, online: 3 }]);
    });
  });

  describe('the fleet listing', () => {
    it('filters by group, status, binding, tag and digits, pages by IMSI, and counts the whole match', async () => {
      const { stores } = await fresh();
      for (let i = 1; i <= 5; i++) {
        const imsi = `00101000000099${i}`;
        await stores.sims.register({ imsi, group: i <= 3 ? 'meters' : 'default', thingName: `sim-${imsi}`, msisdn: `4470000000${i}`, tags: { site: i % 2 ? 'north' : 'south' } });
      }
      await stores.sims.setStatus('001010000000995', 'suspended');
      await stores.sims.bindImei('001010000000991', '490154203237518');
      const page1 = await stores.sims.list({ group: 'meters' }, { limit: 2, onlineSince: 0 });
      expect([page1.items.map((s) => s.imsi), page1.total, page1.next]).toEqual([['001010000000991', '001010000000992'], 3, '001010000000992']);
      const page2 = await stores.sims.list({ group: 'meters' }, { limit: 2, after: page1.next!, onlineSince: 0 });
      expect([page2.items.map((s) => s.imsi), page2.next]).toEqual([['001010000000993'], null]);
      expect((await stores.sims.list({ tag: { key: 'site', value: 'south' } }, { limit: 10, onlineSince: 0 })).items.map((s) => s.imsi)).toEqual(['001010000000992', '001010000000994']);
      expect((await stores.sims.list({ status: 'suspended' }, { limit: 10, onlineSince: 0 })).total).toBe(1);
      expect((await stores.sims.list({ bound: true }, { limit: 10, onlineSince: 0 })).items.map((s) => s.boundImei)).toEqual(['490154203237518']);
      expect((await stores.sims.list({ q: '700000003' }, { limit: 10, onlineSince: 0 })).items.map((s) => s.imsi)).toEqual(['001010000000993']);
      expect((await stores.sims.search('0994')).map((s) => s.imsi)).toEqual(['001010000000994']);
      expect((await stores.sims.search('001010000000995'))[0]?.status).toBe('suspended');
      expect(await stores.sims.update('001010000000994', { group: 'meters', tags: { site: 'east' }, lockMode: 'any' })).toMatchObject({ group: 'meters', tags: { site: 'east' }, lockMode: 'any' });
      expect(await stores.sims.update('001010000000999', { group: 'meters' })).toBeUndefined();
    });
  });

  describe('binding an IMEI', () => {
    it('treats another spelling of the bound device (IMEISV digits, spare 0) as the same device, and another device as a conflict', async () => {
      const { stores } = await fresh();
      await stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-901', boundImei: '490154203237518' });
      expect(await stores.sims.bindImeiChecked(IMSI, '490154203237510', false)).toMatchObject({ outcome: 'unchanged', previous: '490154203237518' });
      expect(await stores.sims.bindImeiChecked(IMSI, '356938035643809', false)).toMatchObject({ outcome: 'conflict' });
      const imported = await stores.sims.upsertMany([{ imsi: IMSI, group: 'default', thingName: 'sim-901', imei: '490154203237510' }], { force: false });
      expect(imported).toEqual([{ result: 'unchanged' }]);
      expect((await stores.sims.get(IMSI))?.boundImei).toBe('490154203237518');
      expect(await stores.sims.bindImeiChecked(IMSI, '356938035643809', true)).toMatchObject({ outcome: 'bound', previous: '490154203237518' });
      expect(await stores.sims.bindImeiChecked(OTHER, '356938035643809', true)).toEqual({ outcome: 'not_found' });
    });

    it('clears the first-delivery time when the IMEI binding changes', async () => {
      const f = await fresh();
      await f.stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-901', boundImei: '490154203237518' });
      await f.sql('UPDATE sims SET delivered_at = 5 WHERE imsi = ?', IMSI);
      await f.stores.sims.bindImei(IMSI, '490154203237518');
      expect((await f.stores.sims.get(IMSI))?.deliveredAt).toBe(5);
      await f.stores.sims.bindImei(IMSI, '356938035643809');
      expect((await f.stores.sims.get(IMSI))?.deliveredAt).toBeNull();
    });
  });

  describe('importing SIMs', () => {
    it('creates, updates and leaves alone in one transaction, fails a row on a taken thing name or ICCID alone, and rolls a dry run back', async () => {
      const { stores } = await fresh();
      await stores.sims.register({ imsi: OTHER, group: 'default', thingName: 'sim-taken', iccid: '8944500000000000001' });
      const rows = [
        { imsi: IMSI, group: 'default', thingName: 'sim-901', imei: '490154203237518' },
        { imsi: '001010000000903', group: 'default', thingName: 'sim-taken' },
        { imsi: '001010000000904', group: 'default', thingName: 'sim-904', iccid: '8944500000000000001' },
        { imsi: OTHER, group: 'meters', thingName: 'sim-taken' },
      ];
      const dry = await stores.sims.upsertMany(rows, { force: false, dryRun: true });
      expect(await stores.sims.get(IMSI)).toBeUndefined();
      const seen: string[] = [];
      const real = await stores.sims.upsertMany(rows, { force: false, onRow: (row, o) => seen.push(`${row.imsi}:${o.result}`) });
      expect(real).toEqual(dry);
      expect(real.map((o) => (o.result === 'failed' ? `${o.field}: ${o.message}` : o.result))).toEqual([
        'created',
        'imsi: thing name already used by another SIM (check the vending.thingName template)',
        `iccid: ICCID already belongs to SIM ${OTHER}`,
        'updated',
      ]);
      expect(seen).toHaveLength(4);
      expect((await stores.sims.get(OTHER))?.group).toBe('meters');
      expect(await stores.sims.upsertMany([rows[0]!], { force: false })).toEqual([{ result: 'unchanged' }]);
    });

    it('decides each row after the rows before it, within a chunk and across chunks', async () => {
      const { stores } = await fresh();
      await stores.sims.register({ imsi: OTHER, group: 'default', thingName: 'sim-taken', iccid: '8944500000000000001' });
      const rows = [
        { imsi: IMSI, group: 'default', thingName: 'sim-901', tags: { a: '1' } },
        { imsi: IMSI, group: 'default', thingName: 'sim-901', tags: { a: '2' } },
        // OTHER gives up its ICCID, and the next SIM takes it.
        { imsi: OTHER, group: 'default', thingName: 'sim-taken', iccid: '8944500000000000002' },
        { imsi: '001010000000904', group: 'default', thingName: 'sim-904', iccid: '8944500000000000001' },
        ...Array.from({ length: 2500 }, (_, i) => ({ imsi: `0010120${String(i).padStart(8, '0')}`, group: 'bulk', thingName: `sim-bulk-${i}` })),
      ];
      const outcomes = await stores.sims.upsertMany(rows, { force: false });
      expect(outcomes.slice(0, 4).map((o) => o.result)).toEqual(['created', 'updated', 'updated', 'created']);
      expect(outcomes.slice(4).every((o) => o.result === 'created')).toBe(true);
      expect((await stores.sims.get(IMSI))?.tags).toEqual({ a: '2' });
      expect((await stores.sims.get(OTHER))?.iccid).toBe('8944500000000000002');
      expect((await stores.sims.get('001010000000904'))?.iccid).toBe('8944500000000000001');
      expect((await stores.sims.upsertMany(rows.slice(4), { force: false })).every((o) => o.result === 'unchanged')).toBe(true);
    });
  });

  describe('admin tokens', () => {
    it('verify only the live token, by its hash, and list and revoke by id', async () => {
      const { stores } = await fresh();
      const { token, record } = await stores.tokens.create('operator', 'ops');
      expect(await stores.tokens.verify(token)).toMatchObject({ id: record.id, role: 'operator' });
      expect(await stores.tokens.verify(token + 'x')).toBeUndefined();
      expect((await stores.tokens.list()).map((t) => [t.id, t.lastUsedAt !== null])).toEqual([[record.id, true]]);
      expect(await stores.tokens.revoke(record.id)).toBe(true);
      expect(await stores.tokens.revoke(record.id)).toBe(false);
      expect(await stores.tokens.verify(token)).toBeUndefined();
    });
  });

  describe('outbox rows the gateway queued itself', () => {
    it('keep their system flag through the commit and back out of peek, and are no sign of the device', async () => {
      const f = await fresh();
      await f.stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-901' });
      // The real commit transaction, run in this thread instead of on the writer thread.
      const writer: CommitWriter = { commit: (req) => f.commit(req), ready: async () => undefined, close: async () => undefined };
      const outbox = await f.outbox(writer);
      const shadow = { imsi: IMSI, deviceTopic: '$aws/things/sim-901/shadow/update', payload: Buffer.from('{}'), qos: 1 as const };
      await outbox.enqueue({ ...shadow, receivedAt: 5000, system: true });
      // A device may write its own shadow too: the topic does not make it the gateway's.
      await outbox.enqueue({ ...shadow, receivedAt: 4000 });
      const rows = await outbox.peek(IMSI, 0, 10);
      expect(rows.map((r) => [r.receivedAt, r.system])).toEqual([
        [5000, true],
        [4000, false],
      ]);
      expect((await f.stores.sims.get(IMSI))?.lastSeenAt).toBe(4000);
      expect((await f.stores.outboxStats.ofSim(IMSI)).newestFromDevice).toBe(4000);
    });
  });

  describe('held downlink', () => {
    it('holds at most maxMessages per device (pushing out the oldest), serves them until removed, and lets expired ones go', async () => {
      const { stores } = await fresh();
      const msg = (n: number) => ({ topic: `cmd/${n}`, payload: Buffer.from(String(n)), qos: 1 as const, receivedAt: 1000 + n });
      expect(await stores.downlink.hold(IMSI, msg(1), 2, 60_000)).toEqual([]);
      await stores.downlink.hold(IMSI, msg(2), 2, 60_000);
      const pushed = await stores.downlink.hold(IMSI, msg(3), 2, 60_000);
      expect(pushed.map((m) => m.topic)).toEqual(['cmd/1']);
      const held = await stores.downlink.pending(IMSI, 2000);
      expect(held.map((m) => [m.topic, m.payload.toString()])).toEqual([['cmd/2', '2'], ['cmd/3', '3']]);
      await stores.downlink.remove([held[0]!.id]);
      expect((await stores.downlink.pending(IMSI, 2000)).map((m) => m.topic)).toEqual(['cmd/3']);
      expect(await stores.downlink.pending(IMSI, 1003 + 60_000)).toEqual([]); // past its age
      expect((await stores.downlink.expire(1003 + 60_000)).map((m) => [m.imsi, m.topic])).toEqual([[IMSI, 'cmd/3']]);
    });

    it('holds a device to maxMessages when commands for it are held at the same time', async () => {
      const { stores } = await fresh();
      // On PostgreSQL each hold takes a connection of its own: in one burst, an overlap is likely.
      for (let n = 0; n < 5; n++) {
        const imsi = `00101000000990${n}`;
        const msg = (i: number) => ({ topic: `cmd/${i}`, payload: Buffer.from(String(i)), qos: 1 as const, receivedAt: 1000 + i });
        const pushed = await Promise.all(Array.from({ length: 20 }, (_, i) => stores.downlink.hold(imsi, msg(i), 3, 60_000)));
        const held = await stores.downlink.pending(imsi, 1000);
        expect(held, imsi).toHaveLength(3);
        // Every command is either still held or answered as pushed out, once.
        expect([...pushed.flat(), ...held].map((m) => m.topic).sort(), imsi).toEqual(Array.from({ length: 20 }, (_, i) => `cmd/${i}`).sort());
      }
    });
  });
});

describe('audit kinds', () => {
  it('are one list without repeats, which tells a known kind from a typo', async () => {
    expect(new Set(AUDIT_KINDS).size).toBe(AUDIT_KINDS.length);
    expect(isAuditKind('imei_bound')).toBe(true);
    expect(isAuditKind('imei_bond')).toBe(false);
    expect(['key', 'policy', 'ready', 'retiring', 'retired'].map((s) => certificateState(s as never))).toEqual(['vending', 'vending', 'ready', 'retired', 'retired']);
  });
});

describe('SQLite outbox rows from before the system column', () => {
  it('are told apart by their $-topic', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'simbridge-migrate-'));
    const file = join(dir, 's.db');
    const old = new Database(file);
    // The schema as the first five migrations left it, with one row of each kind queued.
    old.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)');
    for (const f of readdirSync(migrations).filter((f) => /^00[1-5]_/.test(f)).sort()) {
      old.exec(readFileSync(join(migrations, f), 'utf8'));
      old.prepare('INSERT INTO schema_migrations VALUES (?, ?, 0)').run(Number(f.slice(0, 3)), f);
    }
    const insert = old.prepare("INSERT INTO outbox (imsi, device_topic, payload, qos, received_at) VALUES (?, ?, x'00', 1, 0)");
    insert.run(IMSI, 'telemetry');
    insert.run(IMSI, '$aws/things/sim-901/shadow/update');
    old.close();
    const db = openDatabase({ file, synchronous: 'normal' });
    open.push(db);
    expect(db.prepare('SELECT device_topic, system FROM outbox ORDER BY id').all()).toEqual([
      { device_topic: 'telemetry', system: 0 },
      { device_topic: '$aws/things/sim-901/shadow/update', system: 1 },
    ]);
  });
});

describe('promise-shaped views of the SQLite stores', () => {
  it('run each call at once (inside a caller\'s transaction) and turn a throw into a rejection', async () => {
    const calls: string[] = [];
    const impl = {
      hello: (name: string) => (calls.push(name), `hi ${name}`),
      fail: (): number => {
        throw new Error('disk full');
      },
      hidden: () => 'not in the view',
    };
    const view = promised(impl, ['hello', 'fail']);
    const answer = view.hello('a');
    expect(calls).toEqual(['a']); // ran before anything was awaited
    expect(await answer).toBe('hi a');
    await expect(view.fail()).rejects.toThrow('disk full');
    expect('hidden' in view).toBe(false);
  });
});
