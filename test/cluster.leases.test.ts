// Leases with fencing between nodes on one PostgreSQL database, two nodes in this process each with its own
// pool, change feed and outbox: who delivers a SIM, what a node that lost it may delete, how fast a dead
// node's SIMs move, and that commits for one SIM are serialised across nodes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NewMessage, OutboxMessage } from '../storage/outbox.ts';
import { ChangeFeed } from '../storage/postgres/changes.ts';
import { ClusterNode } from '../storage/postgres/cluster.ts';
import { openPostgres, type Pool } from '../storage/postgres/connect.ts';
import { lockInTransaction } from '../storage/postgres/locks.ts';
import { PgOutbox, postgresWriter } from '../storage/postgres/outbox.ts';
import { findPostgres, PostgresServer } from './helpers/postgres.ts';

const bin = findPostgres();
const X = '001010000016001';
const Y = '001010000016002';

interface Node {
  id: string;
  pool: Pool;
  feed: ChangeFeed;
  cluster: ClusterNode;
  outbox: PgOutbox;
  committed: Array<[string, number[]]>;
  woken: string[];
  lost: string[];
}

const msg = (imsi: string, body: string): NewMessage => ({ imsi, deviceTopic: 't', payload: Buffer.from(body), qos: 1, receivedAt: Date.now() });
const until = async (cond: () => boolean | Promise<boolean>, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe.skipIf(!bin)('leases and fencing on PostgreSQL', () => {
  let server: PostgresServer;
  const nodes: Node[] = [];

  beforeAll(async () => {
    server = await PostgresServer.start(bin!);
  }, 120_000);
  afterAll(async () => {
    for (const n of nodes) {
      n.cluster.stop();
      await n.feed.close();
      await n.pool.end();
    }
    await server?.close();
  });

  async function node(url: string, id: string, timing = { heartbeatMs: 200, leaseMs: 1000 }, listen = true, gate?: () => Promise<void>): Promise<Node> {
    const pool = await openPostgres({ url });
    const feed = new ChangeFeed(url);
    // Not listening: the other nodes' notices never arrive (as when one is still on its way).
    if (listen) await feed.start();
    const cluster = new ClusterNode(pool, { nodeId: id, ...timing, takeoverBatch: 1000 });
    const direct = postgresWriter(pool, undefined, () => outbox.fence());
    // A gate holds each commit before it reaches the database (a commit on its way).
    const writer = gate ? { ...direct, commit: async (req: Parameters<typeof direct.commit>[0]) => (await gate(), direct.commit(req)) } : direct;
    const outbox = await PgOutbox.open(pool, writer, 1000, 1 << 20, { cluster: true });
    outbox.joinCluster(cluster, feed, (err) => {
      throw err;
    });
    const n: Node = { id, pool, feed, cluster, outbox, committed: [], woken: [], lost: [] };
    outbox.onCommitted((rows) => rows.forEach((list, imsi) => n.committed.push([imsi, list.map((r) => r.id)])));
    outbox.onWake((imsi) => n.woken.push(imsi));
    cluster.onLost((imsis) => n.lost.push(...imsis));
    await cluster.join();
    nodes.push(n);
    return n;
  }

  const lease = async (pool: Pool, imsi: string) =>
    (await pool.query<{ owner: string; epoch: number }>('SELECT owner, epoch FROM sim_leases WHERE imsi = $1', [imsi])).rows[0];
  /** A connection in a transaction holding the SIM's commit lock, as another node's commit would. */
  const holdCommitLock = async (pool: Pool, imsi: string) => {
    const holder = await pool.connect();
    await holder.query('BEGIN');
    await lockInTransaction(holder, 'simCommit', imsi);
    return holder;
  };
  const rowsOf = async (pool: Pool, imsi: string) => (await pool.query<{ id: number }>('SELECT id FROM outbox WHERE imsi = $1 ORDER BY id', [imsi])).rows.map((r) => r.id);

  it('the first node to commit for a SIM holds it; another node\'s rows for it are handed to the holder', async () => {
    const url = await server.database();
    const a = await node(url, 'a');
    const b = await node(url, 'b');
    const first = await a.outbox.enqueue(msg(X, 'a1'));
    expect(await lease(a.pool, X)).toEqual({ owner: 'a', epoch: 1 });
    expect(a.cluster.owns(X)).toBe(true);
    expect(a.committed).toEqual([[X, [first]]]);

    const second = await b.outbox.enqueue(msg(X, 'b1'));
    expect(second).toBeGreaterThan(first);
    // b neither delivers nor counts what it holds for a: a hears of it and is woken.
    expect(b.committed).toEqual([]);
    expect(b.outbox.usage(X).rows).toBe(0);
    expect(await b.outbox.peek(X, 0, 10)).toEqual([]);
    await until(() => a.woken.includes(X));
    expect(a.outbox.usage(X).rows).toBe(2);
    expect((await a.outbox.peek(X, 0, 10)).map((r) => r.payload.toString())).toEqual(['a1', 'b1']);
  });

  it('a node that lost a SIM deletes nothing of it; the new owner takes a dead node\'s SIMs within seconds', async () => {
    const url = await server.database();
    const a = await node(url, 'a');
    const b = await node(url, 'b');
    await a.outbox.enqueue(msg(X, 'x1'));
    await a.outbox.enqueue(msg(X, 'x2'));
    const delivered: OutboxMessage[] = await a.outbox.peek(X, 0, 10);
    expect(delivered).toHaveLength(2);

    // a stops beating (as if cut off from the database): b takes X once a's heartbeat is a lease old.
    a.cluster.stop();
    const stoppedAt = Date.now();
    await until(async () => (await lease(b.pool, X))?.owner === 'b');
    const movedAfter = Date.now() - stoppedAt;
    expect(movedAfter).toBeLessThan(3000);
    expect(await lease(b.pool, X)).toEqual({ owner: 'b', epoch: 2 });
    await until(() => b.woken.includes(X));
    expect(b.outbox.usage(X).rows).toBe(2);
    // a has let go by itself before b could take X: it no longer reads X.
    expect(a.cluster.owns(X)).toBe(false);
    expect(await a.outbox.peek(X, 0, 10)).toEqual([]);

    // a's PUBACKs arrive late: its delete, under epoch 1, removes nothing.
    a.outbox.remove(delivered);
    await a.outbox.settle();
    expect((await rowsOf(a.pool, X)).length).toBe(2);

    // b delivers them from the oldest, and its delete under epoch 2 goes through.
    const again = await b.outbox.peek(X, 0, 10);
    expect(again.map((r) => r.payload.toString())).toEqual(['x1', 'x2']);
    b.outbox.remove(again);
    await b.outbox.settle();
    expect(await rowsOf(b.pool, X)).toEqual([]);
    expect(b.outbox.usage(X).rows).toBe(0);
  });

  it('a node leaving on shutdown hands its SIMs to the others at their next heartbeat, not a lease later', async () => {
    const url = await server.database();
    const a = await node(url, 'a', { heartbeatMs: 200, leaseMs: 5000 });
    const b = await node(url, 'b', { heartbeatMs: 200, leaseMs: 5000 });
    await a.outbox.enqueue(msg(X, 'left'));
    const leftAt = Date.now();
    await a.cluster.leave();
    await until(async () => (await lease(b.pool, X))?.owner === 'b', 3000);
    expect(Date.now() - leftAt).toBeLessThan(2000);
    await until(() => b.woken.includes(X));
    expect((await b.outbox.peek(X, 0, 10)).map((r) => r.payload.toString())).toEqual(['left']);
  });

  it('commits for one SIM wait for each other across nodes; other SIMs do not', async () => {
    const url = await server.database();
    const a = await node(url, 'a');
    const b = await node(url, 'b');
    await a.outbox.enqueue(msg(X, 'first'));
    // Another node's commit for X is in its transaction: it holds X's commit lock.
    const holder = await holdCommitLock(a.pool, X);
    let xDone = false;
    const xCommit = b.outbox.enqueue(msg(X, 'waits')).then((id) => ((xDone = true), id));
    try {
      // A commit for another SIM goes through meanwhile (on a, as b's group commit is taken by X's).
      const yId = await a.outbox.enqueue(msg(Y, 'free'));
      await new Promise((r) => setTimeout(r, 300));
      expect(xDone).toBe(false);
      await holder.query('COMMIT');
      // X's row was inserted only once the lock was free: its id comes after Y's.
      expect(await xCommit).toBeGreaterThan(yId);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
    }
  });

  it('the holder reads what another node committed for its SIM just before its own commit, before its notice arrives', async () => {
    const url = await server.database();
    const a = await node(url, 'a', undefined, false);
    const b = await node(url, 'b');
    const first = await a.outbox.enqueue(msg(X, 'a1'));
    expect((await a.outbox.peek(X, 0, 10)).map((r) => r.payload.toString())).toEqual(['a1']);
    await b.outbox.enqueue(msg(X, 'b1'));
    await a.outbox.enqueue(msg(X, 'a2'));
    // Read from memory, a's rows after the first would be a2 alone: b1 would be passed, and left behind.
    expect((await a.outbox.peek(X, first, 10)).map((r) => r.payload.toString())).toEqual(['b1', 'a2']);
  });

  it('a SIM held again after the node could not be sure of it counts what is on disk and what is still on its way', async () => {
    const url = await server.database();
    let open = Promise.resolve();
    let release = () => undefined as void;
    const a = await node(url, 'a', undefined, true, () => open);
    await a.outbox.enqueue(msg(X, 'x1'));
    await a.outbox.enqueue(msg(X, 'x2'));
    expect(a.outbox.usage(X).rows).toBe(2);
    // Its heartbeat stops for longer than it can be sure: it holds nothing until the next one.
    a.cluster.stop();
    await new Promise((r) => setTimeout(r, 900));
    open = new Promise<void>((r) => (release = r));
    const third = a.outbox.enqueue(msg(X, 'x3'));
    // The next heartbeat lets go of X and takes it back, counting it from the database while x3 is on its way.
    await a.cluster.beat();
    expect(a.cluster.owns(X)).toBe(true);
    release();
    await third;
    expect((await rowsOf(a.pool, X)).length).toBe(3);
    expect(a.outbox.usage(X).rows).toBe(3);
  });

  it('after a missed heartbeat, a SIM taken back by the next one and claimed by a commit meanwhile stays held at its newest epoch', async () => {
    const url = await server.database();
    const a = await node(url, 'a');
    await a.outbox.enqueue(msg(X, 'x1'));
    a.cluster.stop();
    // The database is out of reach for one heartbeat, and for longer than the node can be sure of its SIMs.
    const query = a.pool.query;
    a.pool.query = (() => Promise.reject(new Error('connection refused'))) as typeof query;
    await a.cluster.beat();
    a.pool.query = query;
    await new Promise((r) => setTimeout(r, 900));
    // The next heartbeat takes X back; the read of what X has waiting, on its way, is held here.
    let reached = () => undefined as void;
    const reading = new Promise<void>((r) => (reached = r));
    let release = () => undefined as void;
    const held = new Promise<void>((r) => (release = r));
    a.pool.query = ((...args: Parameters<typeof query>) => {
      const text = String(args[0]);
      if (!text.startsWith('SELECT imsi, count(*)')) return query.apply(a.pool, args);
      a.pool.query = query;
      reached();
      return held.then(() => query.apply(a.pool, args));
    }) as typeof query;
    const beat = a.cluster.beat();
    await reading;
    // Meanwhile a device's message commits: X is not noted as held yet, so the commit claims it again.
    await a.outbox.enqueue(msg(X, 'x2'));
    const claimed = (await lease(a.pool, X))!;
    expect(a.cluster.epochOf(X)).toBe(claimed.epoch);
    release();
    await beat;
    // The heartbeat's older answer neither replaces the commit's epoch nor lets go of X.
    expect(await lease(a.pool, X)).toEqual(claimed);
    expect(a.cluster.epochOf(X)).toBe(claimed.epoch);
    expect(a.lost).toEqual([X]);
    expect((await a.outbox.peek(X, 0, 10)).map((r) => r.payload.toString())).toEqual(['x1', 'x2']);
    // What is delivered under that epoch is deleted.
    a.outbox.remove(await a.outbox.peek(X, 0, 10));
    await a.outbox.settle();
    expect(await rowsOf(a.pool, X)).toEqual([]);
  });

  it('the holder\'s own commits, one call each with no transaction around them, wait for the SIM\'s commit lock too', async () => {
    const url = await server.database();
    const a = await node(url, 'a');
    await a.outbox.enqueue(msg(X, 'first'));
    expect(a.cluster.owns(X)).toBe(true);
    const holder = await holdCommitLock(a.pool, X);
    let done = false;
    const next = a.outbox.enqueue(msg(X, 'waits')).then((id) => ((done = true), id));
    try {
      await new Promise((r) => setTimeout(r, 300));
      expect(done).toBe(false);
      await holder.query('COMMIT');
      expect(await next).toBeGreaterThan(0);
      expect((await rowsOf(a.pool, X)).length).toBe(2);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
    }
  });

  it('a restarted node (same id) raises the epochs of what it held, so the process before it can delete nothing', async () => {
    const url = await server.database();
    const a = await node(url, 'a');
    await a.outbox.enqueue(msg(X, 'r1'));
    const before = await lease(a.pool, X);
    a.cluster.stop();
    const again = await node(url, 'a');
    expect(await lease(again.pool, X)).toEqual({ owner: 'a', epoch: before!.epoch + 1 });
    expect(again.outbox.usage(X).rows).toBe(1);
    // The old process, still sure of its lease, delivers and deletes under the epoch it had: nothing goes.
    expect(a.cluster.epochOf(X)).toBe(before!.epoch);
    a.outbox.remove(await again.outbox.peek(X, 0, 10));
    await a.outbox.settle();
    expect((await rowsOf(a.pool, X)).length).toBe(1);
  });
});
