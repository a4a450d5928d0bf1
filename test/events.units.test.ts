import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { maskIdentifiers } from '../admin/mask.ts';
import { eventRenderer } from '../bridge/events/render.ts';
import { EVENT_KINDS, eventsSection } from '../config/events.ts';
import { AuditLog } from '../storage/audit.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import { GATEWAY_OUTBOX_KEY, SqliteEventQueue, tapEvents, type EventFact } from '../storage/events.ts';
import { sqliteStores } from '../storage/index.ts';
import { NetworkSessions } from '../storage/network-sessions.ts';
import { Outbox } from '../storage/outbox.ts';
import type { CommitWriter } from '../storage/outbox-commit.ts';
import { KeyCipher } from '../vending/key-cipher.ts';
import { rotateSealedKeys } from '../vending/master-key.ts';
import { tempDir } from './helpers/processes.ts';

const IMSI = '001010000000931';
const settings = eventsSection.parse({ enabled: true, gateway: 'edge-u' });
const masked = eventRenderer({ settings: () => settings, mask: (v) => maskIdentifiers(v) });
const clear = eventRenderer({ settings: () => settings, mask: (v) => v });
const audit = (kind: string, detail: Record<string, unknown>, imsi: string | null = IMSI): EventFact => ({ source: 'audit', kind: kind as never, imsi, detail, at: 1_800_000_000_000 });
const body = (e: { payload: Buffer } | undefined) => JSON.parse(e!.payload.toString()) as Record<string, any>;

describe('event rendering', () => {
  it('maps each deciding record to its kind, topic and envelope', () => {
    const cases: Array<[EventFact, string]> = [
      [audit('sim_registered', { source: 'claimed', remoteAddress: '127.0.0.1' }), 'first_contact'],
      [audit('vended', { thing: `sim-${IMSI}`, certificateId: 'c1', generation: 1 }), 'certificate_vended'],
      [audit('vended', { thing: `sim-${IMSI}`, certificateId: 'c2', generation: 2, replaces: 'c1' }), 'certificate_rotated'],
      [audit('credentials_revoked', { reason: 'sim terminated', certificateIds: ['c2'] }), 'certificate_revoked'],
      [audit('imei_mismatch', { bound: '490154203237518', seen: '353456789012348', source: 'claimed' }), 'imei_mismatch'],
      [audit('sim_status_changed', { from: 'active', to: 'suspended', by: 'ops' }), 'sim_suspended'],
      [audit('sim_status_changed', { from: 'suspended', to: 'terminated', by: 'ops' }), 'sim_terminated'],
      [{ source: 'outbox', change: 'dead_letter', message: { id: 7, imsi: IMSI, deviceTopic: 't', bytes: 3, receivedAt: 1 }, reason: 'refused', at: 1 }, 'message_dead_lettered'],
      [{ source: 'outbox', change: 'dropped', message: { id: 8, imsi: IMSI, deviceTopic: 't', bytes: 3, receivedAt: 1 }, reason: 'full', at: 1 }, 'message_dropped_quota'],
    ];
    for (const [fact, kind] of cases) {
      const e = clear(fact);
      expect([kind, e?.topic]).toEqual([kind, `simbridge/edge-u/events/${kind}`]);
      expect(body(e)).toMatchObject({ version: 1, kind, gateway: 'edge-u', sim: { imsi: IMSI } });
    }
    expect(new Set(cases.map(([, k]) => k)).size + 2).toBe(EVENT_KINDS.length); // the two network kinds: below
  });

  it('makes no event of what is none: other audit kinds, a status that did not change, a reactivation', () => {
    expect(clear(audit('sim_updated', {}))).toBeUndefined();
    expect(clear(audit('dead_letter', { id: 1 }))).toBeUndefined(); // the outbox's own commit reports it
    expect(clear(audit('message_dropped', { id: 1 }))).toBeUndefined();
    expect(clear(audit('sim_status_changed', { from: 'suspended', to: 'suspended' }))).toBeUndefined();
    expect(clear(audit('sim_status_changed', { from: 'suspended', to: 'active' }))).toBeUndefined();
  });

  it('publishes only the configured kinds', () => {
    const only = eventRenderer({ settings: () => ({ ...settings, kinds: ['imei_mismatch'] }), mask: (v) => v });
    expect(only(audit('sim_registered', {}))).toBeUndefined();
    expect(only(audit('imei_mismatch', {}))).toBeDefined();
  });

  it('masks identifiers, never the envelope', () => {
    const e = body(masked(audit('imei_mismatch', { bound: '490154203237518', seen: '353456789012348' })));
    expect(e).toMatchObject({ sim: { imsi: '00101********31' }, boundImei: '49015********18', seenImei: '35345********48', gateway: 'edge-u', version: 1 });
    const v = body(masked(audit('vended', { thing: `sim-${IMSI}`, certificateId: 'abc' })));
    expect(v.thing).toBe('sim-00101********31');
    expect(JSON.stringify(v)).not.toContain(IMSI);
  });
});

describe('events are written in the transaction of their change', () => {
  const dbs: Db[] = [];
  afterEach(() => {
    for (const db of dbs.splice(0)) db.close();
  });
  const open = (): Db => {
    const db = openDatabase({ file: join(tempDir('events-units'), 'db.sqlite'), synchronous: 'normal' });
    dbs.push(db);
    return db;
  };
  const queued = (db: Db) => db.prepare('SELECT device_topic FROM outbox WHERE imsi = ? ORDER BY id').pluck().all(GATEWAY_OUTBOX_KEY) as string[];

  it('an audit row and its event commit together, or neither does', () => {
    const db = open();
    tapEvents(db, clear, () => undefined);
    const log = new AuditLog(db);
    log.record('imei_mismatch', IMSI, { bound: '1', seen: '2' });
    expect(queued(db)).toEqual(['simbridge/edge-u/events/imei_mismatch']);
    // A change that rolls back takes its audit row and its event with it.
    expect(() =>
      db.transaction(() => {
        log.record('sim_registered', IMSI, {});
        throw new Error('the change failed');
      })(),
    ).toThrow('the change failed');
    expect(queued(db)).toEqual(['simbridge/edge-u/events/imei_mismatch']);
    expect(db.prepare("SELECT COUNT(*) FROM audit WHERE kind = 'sim_registered'").pluck().get()).toBe(0);
  });

  it('network sessions: a Start, an eviction and a Stop each make one event', () => {
    const db = open();
    tapEvents(db, clear, () => undefined);
    const sessions = new NetworkSessions(db);
    const report = (imsi: string, id: string) => ({ ip: '10.0.0.5', imsi, nasIp: '10.0.0.1', acctSessionId: id });
    sessions.applyAll([{ kind: 'start', report: report(IMSI, 's1') }]);
    sessions.applyAll([{ kind: 'interim', report: report(IMSI, 's1') }]); // a refresh: no event
    sessions.applyAll([{ kind: 'start', report: report('001010000000932', 's2') }]); // evicts s1
    sessions.applyAll([{ kind: 'stop', ip: '10.0.0.5', acctSessionId: 's2', nasIp: '10.0.0.1' }]);
    const kinds = queued(db).map((t) => t.split('/').at(-1));
    expect(kinds).toEqual(['network_session_start', 'network_session_stop', 'network_session_start', 'network_session_stop']);
    const bodies = (db.prepare('SELECT payload FROM outbox WHERE imsi = ? ORDER BY id').pluck().all(GATEWAY_OUTBOX_KEY) as Buffer[]).map((p) => JSON.parse(p.toString()));
    expect(bodies.map((b) => b.cause)).toEqual([undefined, 'evicted', undefined, 'stop']);
  });

  it('the SIM dispatcher never sees the gateway\'s rows, and the event queue reads them in order', async () => {
    const db = open();
    tapEvents(db, clear, () => undefined);
    const log = new AuditLog(db);
    log.record('sim_registered', IMSI, {});
    log.record('imei_mismatch', IMSI, {});
    const writer: CommitWriter = { commit: async () => ({ ids: [], deleted: [], seconds: 0 }), ready: async () => undefined, close: async () => undefined };
    const outbox = new Outbox(db, writer);
    expect(outbox.simsWithMessages()).toEqual([]);
    expect(outbox.usage()).toEqual({ rows: 0, bytes: 0 });
    const queue = new SqliteEventQueue(db);
    const rows = await queue.peek(10);
    expect(rows.map((r) => r.topic.split('/').at(-1))).toEqual(['first_contact', 'imei_mismatch']);
    await queue.remove(rows[0]!.id);
    expect(await queue.count()).toBe(1);
  });

  it('rotate-master-key re-seals the gateway\'s key too', async () => {
    const db = open();
    const stores = sqliteStores(db);
    const oldKey = Buffer.alloc(32, 1);
    const newKey = Buffer.alloc(32, 2);
    const sealed = new KeyCipher(oldKey).encrypt(Buffer.from('PEM'), 'gateway:edge-u');
    await stores.gatewayCredentials.create({ gateway: 'edge-u', thingName: 'simbridge-edge-u', keyAlg: 'ec-p256', keyEnc: sealed, csrPem: 'CSR' });
    const r = await rotateSealedKeys(stores, new KeyCipher(newKey, [oldKey]));
    expect(r).toMatchObject({ resealed: 1, unreadable: 0 });
    const row = (await stores.gatewayCredentials.get('edge-u'))!;
    expect(new KeyCipher(newKey).decrypt(row.keyEnc, 'gateway:edge-u').toString()).toBe('PEM');
  });
});
