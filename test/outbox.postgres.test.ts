// The outbox on a real PostgreSQL under what a cluster will do to it: the server lost and back while
// devices send, and two nodes appending for the same SIMs at once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPostgres, type Pool } from '../storage/postgres/connect.ts';
import { PgSimStore } from '../storage/postgres/sims.ts';
import { PgOutbox, postgresWriter } from '../storage/postgres/outbox.ts';
import type { NewMessage } from '../storage/outbox.ts';
import { findPostgres, PostgresServer } from './helpers/postgres.ts';

const SIMS = ['001010000000501', '001010000000502', '001010000000503'];
const msg = (imsi: string, text: string): NewMessage => ({ imsi, deviceTopic: 'meter', payload: Buffer.from(text), qos: 1, receivedAt: Date.now() });

const bin = findPostgres();
describe.skipIf(!bin)('the outbox on PostgreSQL', () => {
  let server: PostgresServer;
  const pools: Pool[] = [];
  beforeAll(async () => {
    server = await PostgresServer.start(bin!);
  }, 120_000);
  afterAll(async () => {
    await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
    await server?.close();
  });

  async function node(url: string) {
    const pool = await openPostgres({ url, maxConnections: 4, connectTimeoutMs: 2000 });
    pools.push(pool);
    return { pool, outbox: await PgOutbox.open(pool, postgresWriter(pool)) };
  }

  it('acknowledges nothing while the server is down, refuses instead of hanging, and commits again once it is back', async () => {
    const url = await server.database();
    const { pool, outbox } = await node(url);
    const before = await Promise.all(Array.from({ length: 50 }, (_, i) => outbox.enqueue(msg(SIMS[i % 3]!, `a${i}`))));

    server.stopNow('immediate'); // a crash: no shutdown checkpoint
    const started = Date.now();
    const during = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => outbox.enqueue(msg(SIMS[0]!, `b${i}`))));
    expect(during.map((r) => r.status)).toEqual(Array(10).fill('rejected'));
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(outbox.usage().rows).toBe(50); // the refused ones are not counted as waiting

    server.startNow();
    const after = await Promise.all(Array.from({ length: 10 }, (_, i) => outbox.enqueue(msg(SIMS[1]!, `c${i}`))));
    const { rows } = await pool.query<{ id: number }>('SELECT id FROM outbox ORDER BY id');
    const stored = new Set(rows.map((r) => r.id));
    expect([...before, ...after].filter((id) => !stored.has(id))).toEqual([]); // every acknowledged row is there
    expect(rows).toHaveLength(60);
  }, 120_000);

  it('takes appends from two nodes for the same SIMs at once without deadlock, each row once and in each node\'s order', async () => {
    const url = await server.database();
    const [a, b] = [await node(url), await node(url)];
    const sims = new PgSimStore(a.pool);
    for (const imsi of SIMS) await sims.register({ imsi, group: 'default', thingName: `sim-${imsi}` });
    const send = (n: typeof a, tag: string) => Promise.all(Array.from({ length: 600 }, (_, i) => n.outbox.enqueue(msg(SIMS[i % 3]!, `${tag}${i}`))));
    const [idsA, idsB] = await Promise.all([send(a, 'a'), send(b, 'b')]);
    expect(new Set([...idsA, ...idsB]).size).toBe(1200);
    const { rows } = await a.pool.query<{ imsi: string; payload: Buffer }>('SELECT imsi, payload FROM outbox ORDER BY id');
    expect(rows).toHaveLength(1200);
    for (const tag of ['a', 'b']) {
      const mine = rows.filter((r) => r.imsi === SIMS[0] && r.payload.toString().startsWith(tag)).map((r) => Number(r.payload.toString().slice(1)));
      expect(mine).toEqual([...mine].sort((x, y) => x - y));
    }
    expect((await sims.get(SIMS[0]!))?.lastSeenAt).toBeGreaterThan(0);
  }, 60_000);
});
