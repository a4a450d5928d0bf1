// The dispatcher in process: a real SQLite outbox in a temp dir, the real session pool over a stand-in
// upstream link (test/helpers/fake-upstream.ts). Each case runs against the outbox as it is (answers at
// once) and against one that answers every read and removal later, as one over the network would.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Dispatcher } from '../bridge/dispatcher.ts';
import { createMetrics } from '../bridge/metrics.ts';
import { configSchema, type Config } from '../config/schema.ts';
import { decodeBatch } from '../docs/examples/decode-batch.mjs';
import { openDatabase, type Db } from '../storage/db.ts';
import { Outbox, type DeliveryOutbox, type OutboxMessage } from '../storage/outbox.ts';
import { committer, type CommitWriter } from '../storage/outbox-commit.ts';
import { SimStore, type Sim } from '../storage/sims.ts';
import { VendingRefusedError, type DeviceCredentials } from '../vending/vendor.ts';
import { fakeUpstreamPool } from './helpers/fake-pool.ts';
import type { FakePublish, FakeUpstreamLink } from './helpers/fake-upstream.ts';

const A = '001010000000101';
const B = '001010000000102';
const C = '001010000000103';

/** Commits on the test's own connection: the same transaction the writer thread runs. */
function inProcessWriter(db: Db): CommitWriter {
  const commit = committer(db);
  return { commit: async (req) => commit(req), ready: async () => undefined, close: async () => undefined };
}

/** The outbox answering every read and removal on a later turn of the event loop. */
function answeringLater(outbox: Outbox): DeliveryOutbox {
  const later = <T>(f: () => T) => new Promise<T>((resolve, reject) => setImmediate(() => (async () => f())().then(resolve, reject)));
  return {
    onCommitted: (listener) => outbox.onCommitted(listener),
    peek: (imsi, afterId, limit) => later(() => outbox.peek(imsi, afterId, limit)),
    remove: (rows) => later(() => outbox.remove(rows)),
    deadLetter: (msg, reason) => later(() => outbox.deadLetter(msg, reason)),
    simsWithMessages: () => later(() => outbox.simsWithMessages()),
    usage: (imsi) => outbox.usage(imsi),
    removals: (imsi) => outbox.removals(imsi),
    rewinds: (imsi) => outbox.rewinds(imsi),
    holds: (imsi) => outbox.holds(imsi),
  };
}

/** The outbox as the dispatcher sees it, with some of its answers replaced. */
function replacing(o: DeliveryOutbox, answers: Partial<DeliveryOutbox>): DeliveryOutbox {
  return {
    onCommitted: (listener) => o.onCommitted(listener),
    peek: (imsi, afterId, limit) => o.peek(imsi, afterId, limit),
    remove: (rows) => o.remove(rows),
    deadLetter: (msg, reason) => o.deadLetter(msg, reason),
    simsWithMessages: () => o.simsWithMessages(),
    usage: (imsi) => o.usage(imsi),
    removals: (imsi) => o.removals(imsi),
    rewinds: (imsi) => o.rewinds(imsi),
    holds: (imsi) => o.holds(imsi),
    ...answers,
  };
}

interface Rig {
  db: Db;
  outbox: Outbox;
  pool: ReturnType<typeof fakeUpstreamPool>['pool'];
  link: FakeUpstreamLink;
  dispatcher: Dispatcher;
  sims: SimStore;
  config: Config;
  deadLetters: Array<{ msg: OutboxMessage; reason: string }>;
  metrics: ReturnType<typeof createMetrics>;
  /** Enqueues a reading (JSON {"seq": n}) and resolves once it is committed. */
  send(imsi: string, seq: number, topic?: string): Promise<number>;
  /** Rows a restart would find in the database. */
  onDisk(imsi?: string): number;
}

const rigs: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const close of rigs.splice(0)) await close();
});

interface RigOptions {
  later: boolean;
  groups?: Record<string, unknown>;
  maxDeliveryAttempts?: number;
  maxInflight?: number;
  retryDelayMs?: number;
  credentials?: (sim: Sim) => Promise<DeviceCredentials>;
  /** Changes what the dispatcher sees of the outbox. */
  wrap?: (outbox: DeliveryOutbox) => DeliveryOutbox;
  /** Rows already queued before the dispatcher is built (a restart). */
  before?: (outbox: Outbox, sims: SimStore) => Promise<void>;
}

async function rig(opts: RigOptions): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'simbridge-dispatcher-'));
  const db = openDatabase({ file: join(dir, 'simbridge.db'), synchronous: 'normal' });
  const sims = new SimStore(db);
  for (const imsi of [A, B, C]) sims.register({ imsi, group: 'default', thingName: `sim-${imsi}` });
  const writer = inProcessWriter(db);
  const outbox = new Outbox(db, writer);
  await opts.before?.(outbox, sims);
  const config = configSchema.parse({ groups: opts.groups ?? { default: {} } });
  const metrics = createMetrics();
  const log = pino({ level: 'silent' });
  const { pool, link } = fakeUpstreamPool({ metrics, log });
  const deadLetters: Rig['deadLetters'] = [];
  const dispatcher = new Dispatcher({
    outbox: (opts.wrap ?? ((o) => o))(opts.later ? answeringLater(outbox) : outbox),
    sims,
    credentials: opts.credentials ?? (async (sim) => ({ thingName: sim.thingName, certificateId: 'c', certificatePem: '', privateKeyPem: '' })),
    pool,
    group: (name) => config.groups[name] ?? config.groups.default!,
    maxMessageBytes: 131072,
    maxInflight: opts.maxInflight ?? 8,
    maxDeliveryAttempts: opts.maxDeliveryAttempts ?? 5,
    retryDelayMs: opts.retryDelayMs ?? 1,
    retryMaxDelayMs: Math.max(5, opts.retryDelayMs ?? 1),
    metrics,
    log,
    onDeadLetter: (msg, reason) => deadLetters.push({ msg, reason }),
  });
  rigs.push(async () => {
    await dispatcher.stop(1000);
    await pool.closeAll();
    await outbox.close();
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    db,
    outbox,
    pool,
    link,
    dispatcher,
    sims,
    config,
    deadLetters,
    metrics,
    send: (imsi, seq, topic = 'meter') => outbox.enqueue({ imsi, deviceTopic: topic, payload: Buffer.from(JSON.stringify({ seq })), qos: 1, receivedAt: Date.now() }),
    onDisk: (imsi) => new Outbox(db, writer).usage(imsi).rows,
  };
}

async function until(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const seqs = (batch: string) => decodeBatch(batch).map((r) => (r.payload as { seq: number }).seq);

/** The readings of a device that arrived upstream, in order, unpacking batches. */
function readings(published: FakePublish[], imsi: string): number[] {
  return published
    .filter((p) => p.thing === `sim-${imsi}`)
    .flatMap((p) => (p.topic.endsWith('/batch') ? seqs(p.payload) : [(JSON.parse(p.payload) as { seq: number }).seq]));
}

const batches = (published: FakePublish[], imsi: string) => published.filter((p) => p.thing === `sim-${imsi}` && p.topic.endsWith('/batch')).map((p) => seqs(p.payload));

const window = (extra: Record<string, unknown> = {}) => ({ default: { batching: { policy: 'window', maxMessages: 3, maxDelayMs: 300, ...extra } } });

describe.each([
  ['the SQLite outbox', false],
  ['an outbox that answers later', true],
])('the dispatcher, over %s', (_name, later) => {
  it('delivers each device\'s messages once, in order, many devices interleaved', async () => {
    const r = await rig({ later });
    const sent: Promise<number>[] = [];
    for (let i = 0; i < 60; i++) for (const imsi of [A, B, C]) sent.push(r.send(imsi, i));
    await Promise.all(sent);
    await until('all delivered', () => r.link.acked.length >= 180);
    const expected = Array.from({ length: 60 }, (_, i) => i);
    for (const imsi of [A, B, C]) expect(readings(r.link.acked, imsi)).toEqual(expected);
    expect(r.link.attempts).toHaveLength(180);
    expect(r.link.connects).toBe(3);
    await until('rows deleted', () => r.onDisk() === 0);
  });

  it('deletes rows only on PUBACK: unacknowledged ones survive a restart', async () => {
    const r = await rig({ later });
    r.link.holdAcks = true;
    await Promise.all([0, 1, 2, 3].map((i) => r.send(A, i)));
    await until('all four in flight', () => r.link.heldAcks === 4);
    await sleep(20);
    expect(r.onDisk(A)).toBe(4);
    r.link.releaseAcks(2);
    await until('two deleted', () => r.onDisk(A) === 2);
    await sleep(20);
    expect(r.onDisk(A)).toBe(2);
    expect(readings(r.link.acked, A)).toEqual([0, 1]);
    r.link.releaseAcks();
    await until('all deleted', () => r.onDisk(A) === 0);
    expect(readings(r.link.acked, A)).toEqual([0, 1, 2, 3]);
  });

  it('resumes what a previous run left in the outbox when started', async () => {
    const r = await rig({
      later,
      before: async (outbox) => {
        for (let i = 0; i < 5; i++) await outbox.enqueue({ imsi: B, deviceTopic: 'meter', payload: Buffer.from(JSON.stringify({ seq: i })), qos: 1, receivedAt: Date.now() });
      },
    });
    await sleep(20);
    expect(r.link.attempts).toHaveLength(0);
    r.dispatcher.start();
    await until('delivered', () => r.link.acked.length === 5);
    expect(readings(r.link.acked, B)).toEqual([0, 1, 2, 3, 4]);
  });

  it('after a failed publish resends from the oldest unacknowledged row: nothing lost, order kept', async () => {
    const r = await rig({ later, maxInflight: 4 });
    let failures = 1;
    r.link.refuse = (p) => p.payload === '{"seq":3}' && failures-- > 0;
    await Promise.all(Array.from({ length: 10 }, (_, i) => r.send(A, i)));
    await until('delivered', () => r.onDisk(A) === 0);
    const got = readings(r.link.acked, A);
    // At-least-once: a row acknowledged on the dropped connection may come again, but in order from 3.
    expect([...new Set(got)]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(got.slice(got.lastIndexOf(3))).toEqual([3, 4, 5, 6, 7, 8, 9]);
    expect(r.link.connects).toBe(2);
    expect(r.deadLetters).toHaveLength(0);
  });

  it('retries while the upstream refuses connections, without counting that against any message', async () => {
    const r = await rig({ later, maxDeliveryAttempts: 2 });
    r.link.refuseConnects = 5;
    await Promise.all([0, 1, 2].map((i) => r.send(C, i)));
    await until('delivered', () => r.link.acked.length === 3);
    expect(readings(r.link.acked, C)).toEqual([0, 1, 2]);
    expect(r.deadLetters).toHaveLength(0);
  });

  it('moves a message IoT Core keeps refusing to the dead letters after maxDeliveryAttempts; the rest follows in order', async () => {
    const r = await rig({ later, maxDeliveryAttempts: 3 });
    r.link.refuse = (p) => p.payload === '{"seq":2}';
    await Promise.all([0, 1, 2, 3, 4].map((i) => r.send(A, i)));
    await until('delivered', () => r.onDisk(A) === 0);
    expect(r.link.attempts.filter((p) => p.payload === '{"seq":2}')).toHaveLength(3);
    expect(r.deadLetters.map((d) => JSON.parse(d.msg.payload.toString()).seq)).toEqual([2]);
    expect(r.deadLetters[0]!.reason).toMatch(/^refused upstream 3 times \(/);
    const got = readings(r.link.acked, A);
    expect(got).not.toContain(2);
    expect(got.slice(got.lastIndexOf(1))).toEqual([1, 3, 4]);
    expect((await r.metrics.deadLetters.get()).values).toEqual([expect.objectContaining({ labels: { reason: 'refused_upstream' }, value: 1 })]);
  });

  it('dead-letters a SIM\'s whole queue when it can never get credentials (matched by the error\'s class)', async () => {
    const r = await rig({ later, credentials: () => Promise.reject(new VendingRefusedError('SIM is terminated')) });
    await Promise.all([0, 1, 2].map((i) => r.send(B, i)));
    await until('dead-lettered', () => r.deadLetters.length === 3);
    expect(r.deadLetters.map((d) => d.reason)).toEqual(Array(3).fill('not delivered: SIM is terminated'));
    expect(r.onDisk(B)).toBe(0);
    expect(r.link.connects).toBe(0);
  });

  it('window: holds readings without a session until the batch is full or maxDelay passes', async () => {
    const r = await rig({ later, groups: window() });
    const started = Date.now();
    await r.send(A, 0);
    await r.send(A, 1);
    await sleep(100);
    expect(r.link.attempts).toHaveLength(0);
    expect(r.link.connects).toBe(0);
    await until('the window closes', () => r.link.acked.length === 1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(batches(r.link.acked, A)).toEqual([[0, 1]]);
    // Three readings fill a batch: it goes at once.
    const full = Date.now();
    await Promise.all([2, 3, 4].map((i) => r.send(A, i)));
    await until('the full batch', () => r.link.acked.length === 2);
    expect(Date.now() - full).toBeLessThan(250);
    expect(batches(r.link.acked, A)).toEqual([[0, 1], [2, 3, 4]]);
    await until('rows deleted', () => r.onDisk(A) === 0);
  });

  it('window: readings arriving one by one join the open batch, which goes when full', async () => {
    const r = await rig({ later, groups: window({ maxDelayMs: 60_000 }) });
    for (let i = 0; i < 7; i++) await r.send(B, i);
    await until('two full batches', () => r.link.acked.length === 2);
    await sleep(50);
    expect(batches(r.link.acked, B)).toEqual([[0, 1, 2], [3, 4, 5]]);
    expect(r.onDisk(B)).toBe(1);
    // Shutdown: every open batch is due.
    await r.dispatcher.flush(2000);
    expect(batches(r.link.acked, B)).toEqual([[0, 1, 2], [3, 4, 5], [6]]);
    expect(r.onDisk(B)).toBe(0);
  });

  it('schedule: sends what arrived before the schedule fired, and nothing before', async () => {
    const r = await rig({ later, groups: { default: { batching: { policy: 'schedule', maxMessages: 10 } } } });
    await Promise.all([0, 1].map((i) => r.send(C, i)));
    r.dispatcher.start();
    await sleep(100);
    expect(r.link.attempts).toHaveLength(0);
    r.dispatcher.release('default');
    await until('released', () => r.link.acked.length === 1);
    expect(batches(r.link.acked, C)).toEqual([[0, 1]]);
  });

  it('a lane\'s open batch goes stale when one of its rows is dropped: the batch is planned again without it', async () => {
    const r = await rig({ later, groups: window({ maxDelayMs: 60_000 }) });
    await r.send(A, 0);
    await r.send(A, 1);
    // The outbox drops the oldest row (drop-oldest at a quota): the open batch held it.
    let room = 1;
    expect(r.outbox.dropOldest(A, () => room-- <= 0).map((m) => JSON.parse(m.payload.toString()).seq)).toEqual([0]);
    await r.send(A, 2);
    await r.send(A, 3);
    await until('the full batch', () => r.link.acked.length === 1);
    expect(batches(r.link.acked, A)).toEqual([[1, 2, 3]]);
  });

  it('a lane\'s open batch goes stale on a reload that changes the group\'s batching: the rows follow the new policy', async () => {
    const r = await rig({ later, groups: window({ maxDelayMs: 60_000 }) });
    await r.send(B, 0);
    await r.send(B, 1);
    await sleep(20);
    expect(r.link.attempts).toHaveLength(0);
    // A reload replaces the group's config; the held batch was planned with the old one.
    r.config.groups.default = configSchema.parse({ groups: { default: { batching: { policy: 'immediate' } } } }).groups.default!;
    await r.send(B, 2);
    await until('delivered', () => r.link.acked.length === 3);
    expect(r.link.acked.map((p) => p.topic)).toEqual(Array(3).fill(`devices/sim-${B}/meter`));
    expect(readings(r.link.acked, B)).toEqual([0, 1, 2]);
  });

  it('reads a SIM again from its oldest row when the outbox says rows may lie behind the cursor', async () => {
    // As on PostgreSQL when a SIM is held again: rows committed meanwhile never reached this node's
    // memory, so a read after the cursor from memory does not find them; a read from the oldest row does.
    const hidden = new Set<number>();
    let rewinds = 0;
    const seq = (r: OutboxMessage) => (JSON.parse(r.payload.toString()) as { seq: number }).seq;
    const r = await rig({
      later,
      wrap: (o) =>
        replacing(o, {
          onCommitted: (listener) =>
            o.onCommitted((rows) => {
              const handed = new Map([...rows].map(([imsi, list]) => [imsi, list.filter((m) => !hidden.has(seq(m)))] as const).filter(([, list]) => list.length > 0));
              if (handed.size) listener(handed);
            }),
          peek: async (imsi, afterId, limit) => {
            // A read from the oldest row goes to disk: from then on the rows are known.
            if (afterId === 0) hidden.clear();
            return (await o.peek(imsi, afterId, limit + hidden.size)).filter((m) => !hidden.has(seq(m))).slice(0, limit);
          },
          rewinds: () => rewinds,
        }),
    });
    await r.send(A, 0);
    await until('the first delivered', () => r.link.acked.length === 1);
    hidden.add(1).add(2);
    await r.send(A, 1);
    await r.send(A, 2);
    rewinds++;
    await r.send(A, 3);
    await until('all delivered', () => r.onDisk(A) === 0);
    expect(readings(r.link.acked, A)).toEqual([0, 1, 2, 3]);
  });

  it('leaves a SIM another node took mid-publish to that node, and resumes at once when it is held again', async () => {
    let held = true;
    const r = await rig({ later, retryDelayMs: 20_000, wrap: (o) => replacing(o, { holds: () => held }) });
    r.link.holdAcks = true;
    await r.send(A, 0);
    await until('in flight', () => r.link.heldAcks === 1);
    // Another node holds the SIM now: this node closes its session (app/steps/cluster.ts).
    held = false;
    await r.pool.drop(`sim-${A}`);
    await sleep(50);
    expect(r.onDisk(A)).toBe(1);
    // Held again: the outbox wakes the lane, and nothing waits for the 20 s retry delay.
    held = true;
    r.link.holdAcks = false;
    r.dispatcher.wake(A);
    await until('delivered once held again', () => r.onDisk(A) === 0, 3000);
    expect(readings(r.link.acked, A)).toEqual([0]);
  });

  it('a lane\'s open batch goes stale when its SIM is bound to another IMEI: the batch carries the new identity', async () => {
    const r = await rig({ later, groups: window({ maxDelayMs: 60_000 }) });
    await r.send(C, 0);
    r.sims.bindImei(C, '490154203237518');
    await r.send(C, 1);
    await r.send(C, 2);
    await until('the full batch', () => r.link.acked.length === 1);
    const [reading] = decodeBatch(r.link.acked[0]!.payload) as Array<{ imei: string }>;
    expect(reading!.imei).toBe('490154203237518');
    expect(batches(r.link.acked, C)).toEqual([[0, 1, 2]]);
  });
});

describe('the dispatcher when the outbox fails', () => {
  it('keeps a queue it could not dead-letter, and delivers it once the SIM can be served again', async () => {
    let refuse = true;
    const r = await rig({
      later: false,
      credentials: async (sim) => {
        if (refuse) throw new VendingRefusedError('SIM is terminated');
        return { thingName: sim.thingName, certificateId: 'c', certificatePem: '', privateKeyPem: '' };
      },
      wrap: (o) => replacing(o, { deadLetter: () => Promise.reject(new Error('database unavailable')) }),
    });
    await Promise.all([0, 1, 2].map((i) => r.send(A, i)));
    await sleep(50);
    expect(r.onDisk(A)).toBe(3);
    expect(r.deadLetters).toHaveLength(0);
    refuse = false;
    await r.send(A, 3);
    await until('delivered', () => r.link.acked.length === 4);
    expect(readings(r.link.acked, A)).toEqual([0, 1, 2, 3]);
  });
});
