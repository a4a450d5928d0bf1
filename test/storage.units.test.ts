// The stores' own rules, against SQLite in a temp directory.
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { AUDIT_KINDS, isAuditKind } from '../storage/audit.ts';
import { certificateState } from '../storage/credentials.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import { sqliteStores, type Stores } from '../storage/index.ts';
import { Outbox } from '../storage/outbox.ts';
import { committer, type CommitWriter } from '../storage/outbox-commit.ts';
import { promised } from '../storage/promised.ts';

const DAY = 86_400_000;
const migrations = fileURLToPath(new URL('../storage/migrations/', import.meta.url));
let open: Db[] = [];

function fresh(): { db: Db; stores: Stores } {
  const db = openDatabase({ file: join(mkdtempSync(join(tmpdir(), 'simbridge-stores-')), 's.db'), synchronous: 'normal' });
  open.push(db);
  return { db, stores: sqliteStores(db) };
}

afterEach(() => {
  for (const db of open) db.close();
  open = [];
});

const IMSI = '001010000000901';
const OTHER = '001010000000902';

/** Queues a message as the outbox writer does (in this thread): the device's, or the gateway's own. */
function queue(db: Db, imsi: string, topic: string, receivedAt: number, system = false): void {
  committer(db)({ inserts: [{ imsi, deviceTopic: topic, payload: Buffer.from('x'), qos: 1, receivedAt, system }], deletes: [] });
}

describe('audit log queries', () => {
  it('filters by SIM, several kinds and a time range, newest first, and pages on with nextBefore', async () => {
    const { stores } = fresh();
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

describe('audit kinds', () => {
  it('are one list without repeats, which tells a known kind from a typo', async () => {
    expect(new Set(AUDIT_KINDS).size).toBe(AUDIT_KINDS.length);
    expect(isAuditKind('imei_bound')).toBe(true);
    expect(isAuditKind('imei_bond')).toBe(false);
  });
});

describe('outbox figures for the admin surface', () => {
  it('sums the queue, tells a SIM\'s own messages from the gateway\'s, and counts recent dead letters', async () => {
    const { db, stores } = fresh();
    expect(await stores.outboxStats.summary()).toEqual({ depth: 0, sims: 0, oldestReceivedAt: null });
    queue(db, IMSI, 'telemetry', 1000);
    queue(db, IMSI, '$aws/things/sim-901/shadow/update', 3000, true);
    queue(db, OTHER, 'telemetry', 2000);
    expect(await stores.outboxStats.summary()).toEqual({ depth: 3, sims: 2, oldestReceivedAt: 1000 });
    expect(await stores.outboxStats.ofSim(IMSI)).toEqual({ depth: 2, oldestReceivedAt: 1000, newestFromDevice: 1000 });
    expect(await stores.outboxStats.ofSim('001010000000999')).toEqual({ depth: 0, oldestReceivedAt: null, newestFromDevice: null });

    const dead = db.prepare("INSERT INTO dead_letters (imsi, device_topic, payload, received_at, reason, failed_at) VALUES (?, 't', x'00', 0, 'r', ?)");
    dead.run(IMSI, Date.now() - 2 * DAY);
    dead.run(IMSI, Date.now());
    expect(await stores.outboxStats.deadLetters(Date.now() - DAY)).toEqual({ total: 2, recent: 1 });
  });
});

describe('credential figures', () => {
  it('count SIMs with a certificate in use and SIMs being vended, and name each step\'s state once', async () => {
    const { db, stores } = fresh();
    for (const imsi of [IMSI, OTHER]) await stores.sims.register({ imsi, group: 'default', thingName: `sim-${imsi}` });
    const row = db.prepare(
      "INSERT INTO credentials (imsi, thing_name, step, key_alg, key_enc, csr_pem, created_at, updated_at) VALUES (?, 't', ?, 'ec', x'00', 'csr', 0, 0)",
    );
    row.run(IMSI, 'ready');
    row.run(IMSI, 'csr_sent'); // rotating
    row.run(OTHER, 'retired');
    expect(await stores.credentialReads.countByState()).toEqual({ ready: 1, vending: 1 });
    expect((await stores.credentialReads.history(IMSI)).map((r) => r.step)).toEqual(['ready', 'csr_sent']);
    expect(['key', 'policy', 'ready', 'retiring', 'retired'].map((s) => certificateState(s as never))).toEqual(['vending', 'vending', 'ready', 'retired', 'retired']);
  });
});

describe('retention', () => {
  it('deletes at most a chunk of rows past their age, and leaves a target without an age column alone', async () => {
    const { db, stores } = fresh();
    const insert = db.prepare("INSERT INTO audit (at, imsi, kind, detail) VALUES (?, NULL, 'k', '{}')");
    for (let i = 0; i < 5; i++) insert.run(Date.now() - 40 * DAY);
    insert.run(Date.now());
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
    const { stores } = fresh();
    expect(await stores.meta.get('k')).toBeUndefined();
    await stores.meta.putIfAbsent('k', Buffer.from('one'));
    await stores.meta.putIfAbsent('k', Buffer.from('two'));
    expect((await stores.meta.get('k'))?.toString()).toBe('one');
  });
});

describe('network sessions in one transaction', () => {
  it('apply a batch of changes, keeping one that failed from taking the others down', async () => {
    const { stores } = fresh();
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
    // One commit for the batch: the others hold, and devices are identified from them at once.
    expect((await stores.networkSessions.list()).map((s) => s.ip)).toEqual(['10.0.0.2']);
    expect(stores.sessionLookup.byIp('10.0.0.2')?.imsi).toBe(OTHER);
    expect([stores.sessionLookup.count(), await stores.networkSessions.count()]).toEqual([1, 1]);
    expect((await stores.networkSessions.byImsi(OTHER)).map((s) => s.ip)).toEqual(['10.0.0.2']);
  });
});

describe('online', () => {
  it('is one rule: the listing, the counts and the single-SIM answer agree for every kind of activity', async () => {
    const { db, stores } = fresh();
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
    stores.simRouting.markSeen(sims.seen, now - 1000);
    queue(db, sims.queued, 'telemetry', now - 1000);
    queue(db, sims.gatewayOnly, '$aws/things/sim-914/shadow/update', now - 1000, true);
    stores.simRouting.markSeen(sims.stale, now - 3_600_000);

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

describe('outbox rows the gateway queued itself', () => {
  it('keep their system flag through the commit and back out of peek, and are no sign of the device', async () => {
    const { db, stores } = fresh();
    await stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-901' });
    const commit = committer(db);
    // The real commit transaction, run in this thread instead of on the writer thread.
    const writer: CommitWriter = { commit: async (req) => commit(req), ready: async () => undefined, close: async () => undefined };
    const outbox = new Outbox(db, writer);
    const shadow = { imsi: IMSI, deviceTopic: '$aws/things/sim-901/shadow/update', payload: Buffer.from('{}'), qos: 1 as const };
    await outbox.enqueue({ ...shadow, receivedAt: 5000, system: true });
    // A device may write its own shadow too: the topic does not make it the gateway's.
    await outbox.enqueue({ ...shadow, receivedAt: 4000 });
    const rows = outbox.peek(IMSI, 0, 10);
    expect(rows.map((r) => [r.receivedAt, r.system])).toEqual([
      [5000, true],
      [4000, false],
    ]);
    expect((await stores.sims.get(IMSI))?.lastSeenAt).toBe(4000);
    expect((await stores.outboxStats.ofSim(IMSI)).newestFromDevice).toBe(4000);
  });

  it('are told apart in a database from before the column, by their $-topic', async () => {
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

describe('binding an IMEI', () => {
  it('treats another spelling of the bound device (IMEISV digits, spare 0) as the same device, and another device as a conflict', async () => {
    const { stores } = fresh();
    await stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-901', boundImei: '490154203237518' });
    expect(await stores.sims.bindImeiChecked(IMSI, '490154203237510', false)).toMatchObject({ outcome: 'unchanged', previous: '490154203237518' });
    expect(await stores.sims.bindImeiChecked(IMSI, '356938035643809', false)).toMatchObject({ outcome: 'conflict' });
    const imported = await stores.sims.upsertMany([{ imsi: IMSI, group: 'default', thingName: 'sim-901', imei: '490154203237510' }], { force: false });
    expect(imported).toEqual([{ result: 'unchanged' }]);
    expect((await stores.sims.get(IMSI))?.boundImei).toBe('490154203237518');
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

describe('held downlink', () => {
  it('holds at most maxMessages per device (pushing out the oldest), serves them until removed, and lets expired ones go', async () => {
    const { stores } = fresh();
    const msg = (n: number) => ({ topic: `cmd/${n}`, payload: Buffer.from(String(n)), qos: 1 as const, receivedAt: 1000 + n });
    expect(await stores.downlink.hold(IMSI, msg(1), 2, 60_000)).toEqual([]);
    await stores.downlink.hold(IMSI, msg(2), 2, 60_000);
    const pushed = await stores.downlink.hold(IMSI, msg(3), 2, 60_000);
    expect(pushed.map((m) => m.topic)).toEqual(['cmd/1']);
    const held = stores.downlink.pending(IMSI, 2000);
    expect(held.map((m) => m.topic)).toEqual(['cmd/2', 'cmd/3']);
    await stores.downlink.remove([held[0]!.id]);
    expect(stores.downlink.pending(IMSI, 2000).map((m) => m.topic)).toEqual(['cmd/3']);
    expect(stores.downlink.pending(IMSI, 1003 + 60_000)).toEqual([]); // past its age
    expect((await stores.downlink.expire(1003 + 60_000)).map((m) => [m.imsi, m.topic])).toEqual([[IMSI, 'cmd/3']]);
  });
});
