// The outbox in process, on a real SQLite file in a temp dir and on a throw-away PostgreSQL: commits run
// in this thread through the same transaction the writer runs (storage/outbox-commit.ts on SQLite,
// storage/postgres/outbox.ts on PostgreSQL), behind a writer the test can hold.
import { describe, expect, it } from 'vitest';
import type { NewMessage, OutboxMessage } from '../storage/outbox.ts';
import type { CommitRequest, CommitResult, CommitWriter } from '../storage/outbox-commit.ts';
import { storeDialects, type StoreFixture } from './helpers/store-dialects.ts';

const A = '001010000000201';
const B = '001010000000202';

/** A writer committing in this thread; while `held`, commits wait until released (or failed). */
class TestWriter implements CommitWriter {
  readonly requests: CommitRequest[] = [];
  held = false;
  private readonly waiting: Array<{ go: () => void; fail: (err: Error) => void }> = [];

  constructor(private readonly run: (req: CommitRequest) => Promise<CommitResult>) {}

  async commit(req: CommitRequest): Promise<CommitResult> {
    this.requests.push(req);
    if (this.held) await new Promise<void>((go, fail) => this.waiting.push({ go, fail }));
    return this.run(req);
  }

  release(): void {
    for (const w of this.waiting.splice(0)) w.go();
  }

  fail(err: Error): void {
    for (const w of this.waiting.splice(0)) w.fail(err);
  }

  async ready(): Promise<void> {}
  async close(): Promise<void> {}
}

const msg = (imsi: string, text: string, receivedAt = Date.now()): NewMessage => ({ imsi, deviceTopic: 'meter', payload: Buffer.from(text), qos: 1, receivedAt });
const texts = (rows: OutboxMessage[]) => rows.map((r) => r.payload.toString());
const tick = () => new Promise((r) => setImmediate(r));
const until = async (done: () => boolean) => {
  for (let i = 0; i < 500 && !done(); i++) await new Promise((r) => setTimeout(r, 2));
};

describe.each(storeDialects())('the outbox on $name', (dialect) => {
  async function setup(maxRows = 1000, maxTailBytes?: number) {
    const f: StoreFixture = await dialect.fresh();
    const writer = new TestWriter((req) => f.commit(req));
    const outbox = await f.outbox(writer, maxRows, maxTailBytes);
    /** What a restart would find: a new outbox on the same database. */
    const reopened = () => f.outbox(new TestWriter((req) => f.commit(req)));
    return { f, writer, outbox, reopened };
  }

  it('group-commits what is enqueued together and settles each promise only after the commit', async () => {
    const { outbox, writer, reopened } = await setup();
    writer.held = true;
    const committed: Array<Map<string, OutboxMessage[]>> = [];
    outbox.onCommitted((rows) => committed.push(rows));
    let settled = 0;
    const ids = ['a1', 'b1', 'a2', 'a3'].map((t) => outbox.enqueue(msg(t.startsWith('a') ? A : B, t)).then((id) => (settled++, id)));
    await tick();
    expect(writer.requests).toHaveLength(1);
    expect(writer.requests[0]!.inserts).toHaveLength(4);
    await tick();
    expect(settled).toBe(0);
    expect((await reopened()).usage().rows).toBe(0);
    // Counted while pending: quota checks see what waits for the disk too.
    expect(outbox.usage(A)).toEqual({ rows: 3, bytes: 6 });
    writer.release();
    const got = await Promise.all(ids);
    expect(got).toEqual([...got].sort((x, y) => x - y));
    expect((await reopened()).usage()).toEqual({ rows: 4, bytes: 8 });
    expect(committed).toHaveLength(1);
    expect(texts(committed[0]!.get(A)!)).toEqual(['a1', 'a2', 'a3']);
    expect(texts(committed[0]!.get(B)!)).toEqual(['b1']);
  });

  it('gathers what arrives during a commit into the next one, at most maxRows each', async () => {
    const { outbox, writer } = await setup(3);
    writer.held = true;
    const first = outbox.enqueue(msg(A, 'x0'));
    await tick();
    const more = Array.from({ length: 5 }, (_, i) => outbox.enqueue(msg(A, `x${i + 1}`)));
    await tick();
    expect(writer.requests).toHaveLength(1);
    writer.release();
    await first;
    await until(() => writer.requests.length === 2);
    writer.release();
    await until(() => writer.requests.length === 3);
    writer.release();
    await Promise.all(more);
    expect(writer.requests.map((r) => r.inserts.length)).toEqual([1, 3, 2]);
    expect(texts(await outbox.peek(A, 0, 10))).toEqual(['x0', 'x1', 'x2', 'x3', 'x4', 'x5']);
  });

  it('fails the promises of a commit that fails, and stops counting those messages', async () => {
    const { outbox, writer } = await setup();
    writer.held = true;
    const p = outbox.enqueue(msg(A, 'lost'));
    await tick();
    writer.fail(new Error('disk full'));
    await expect(p).rejects.toThrow('disk full');
    expect(outbox.usage()).toEqual({ rows: 0, bytes: 0 });
  });

  it('peeks a SIM\'s rows in order after an id; delivered rows are never peeked again and leave with the next commit', async () => {
    const { outbox, reopened } = await setup();
    const ids = await Promise.all(['m0', 'm1', 'm2', 'm3'].map((t) => outbox.enqueue(msg(A, t))));
    await outbox.enqueue(msg(B, 'other'));
    expect(texts(await outbox.peek(A, 0, 10))).toEqual(['m0', 'm1', 'm2', 'm3']);
    expect(texts(await outbox.peek(A, ids[1]!, 1))).toEqual(['m2']);
    expect(await outbox.peek(A, ids[3]!, 10)).toEqual([]);
    outbox.remove(await outbox.peek(A, 0, 2));
    expect(texts(await outbox.peek(A, 0, 2))).toEqual(['m2', 'm3']);
    // Still on disk until the commit that deletes them.
    expect((await reopened()).usage(A).rows).toBe(4);
    await outbox.settle();
    expect((await reopened()).usage(A).rows).toBe(2);
    expect(outbox.usage(A)).toEqual({ rows: 2, bytes: 4 });
    expect(outbox.removals(A)).toBe(0);
    expect(outbox.simsWithMessages().sort()).toEqual([A, B]);
  });

  it.each([
    ['from the tail of committed rows', undefined],
    ['from disk, the tail held to 5 bytes', 5],
  ])('skips a delivered row between undelivered ones and reads on past it, %s', async (_how, maxTailBytes) => {
    const { outbox, reopened } = await setup(1000, maxTailBytes);
    const ids = await Promise.all(['m0', 'm1', 'm2', 'm3'].map((t) => outbox.enqueue(msg(A, t))));
    outbox.remove(await outbox.peek(A, ids[0]!, 2));
    expect(texts(await outbox.peek(A, 0, 2))).toEqual(['m0', 'm3']);
    expect(texts(await outbox.peek(A, ids[0]!, 1))).toEqual(['m3']);
    expect(texts(await outbox.peek(A, 0, 10))).toEqual(['m0', 'm3']);
    await outbox.settle();
    expect(texts(await outbox.peek(A, 0, 10))).toEqual(['m0', 'm3']);
    expect(texts(await (await reopened()).peek(A, 0, 10))).toEqual(['m0', 'm3']);
    // Rows committed after a restart's backlog follow it.
    const later = await outbox.enqueue(msg(A, 'm4'));
    expect(texts(await outbox.peek(A, 0, 10))).toEqual(['m0', 'm3', 'm4']);
    expect(texts(await outbox.peek(A, ids[3]!, 10))).toEqual(['m4']);
    outbox.remove(await outbox.peek(A, 0, 10));
    expect(await outbox.peek(A, 0, 10)).toEqual([]);
    await outbox.settle();
    expect((await reopened()).usage(A).rows).toBe(0);
    expect(later).toBeGreaterThan(ids[3]!);
  });

  it('with a delete delay, lets deletes ride with the next commit of new rows, or commits them alone once it passes', async () => {
    const { outbox, writer, reopened } = await setup();
    outbox.setDeleteDelay(200);
    await Promise.all(['k0', 'k1', 'k2'].map((t) => outbox.enqueue(msg(A, t))));
    const before = writer.requests.length;
    outbox.remove(await outbox.peek(A, 0, 1));
    await tick();
    await tick();
    expect(writer.requests.length).toBe(before); // no commit of its own yet
    await outbox.enqueue(msg(A, 'k3'));
    expect(writer.requests.slice(before).map((r) => [r.inserts.length, r.deletes.length])).toEqual([[1, 1]]);
    expect((await reopened()).usage(A).rows).toBe(3);
    // Nothing new comes: the delete commits alone once the delay has passed.
    const started = Date.now();
    outbox.remove(await outbox.peek(A, 0, 1));
    await until(() => writer.requests.length > before + 1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    expect(writer.requests.slice(before + 1).map((r) => [r.inserts.length, r.deletes.length])).toEqual([[0, 1]]);
    await until(() => outbox.usage(A).rows === 2);
    expect((await reopened()).usage(A).rows).toBe(2);
    expect(texts(await outbox.peek(A, 0, 10))).toEqual(['k2', 'k3']);
  });

  it('moves a row to the dead letters once, with its reason, and counts it as a removal', async () => {
    const { outbox, f, reopened } = await setup();
    await Promise.all(['d0', 'd1'].map((t) => outbox.enqueue(msg(A, t))));
    const [row] = await outbox.peek(A, 0, 1);
    await outbox.deadLetter(row!, 'refused upstream 5 times');
    await outbox.deadLetter(row!, 'again');
    expect(outbox.removals(A)).toBe(1);
    expect(texts(await outbox.peek(A, 0, 10))).toEqual(['d1']);
    expect(outbox.usage(A).rows).toBe(1);
    expect((await reopened()).usage(A).rows).toBe(1);
    const dead = await f.sql<{ imsi: string; payload: Buffer; reason: string }>('SELECT imsi, payload, reason FROM dead_letters');
    expect(dead.map((d) => [d.imsi, d.payload.toString(), d.reason])).toEqual([[A, 'd0', 'refused upstream 5 times']]);
  });

  it('drops a SIM\'s oldest rows until there is room, counting each as a removal, but never a row already delivered', async () => {
    const { outbox, reopened } = await setup();
    await Promise.all(['o0', 'o1', 'o2', 'o3', 'o4'].map((t) => outbox.enqueue(msg(A, t))));
    outbox.remove(await outbox.peek(A, 0, 1)); // o0 delivered, its delete not committed yet
    const dropped = await outbox.dropOldest(A, () => outbox.usage(A).rows <= 3);
    expect(texts(dropped)).toEqual(['o1', 'o2']);
    expect(outbox.removals(A)).toBe(2);
    expect(outbox.removals(B)).toBe(0);
    expect(texts(await outbox.peek(A, 0, 10))).toEqual(['o3', 'o4']);
    await outbox.settle();
    expect((await reopened()).usage(A).rows).toBe(2);
  });

  it('finds after a restart what was left, per SIM', async () => {
    const { outbox, reopened } = await setup();
    await Promise.all([msg(A, 'r0'), msg(B, 'r1'), msg(B, 'r22')].map((m) => outbox.enqueue(m)));
    const again = await reopened();
    expect(again.usage(A)).toEqual({ rows: 1, bytes: 2 });
    expect(again.usage(B)).toEqual({ rows: 2, bytes: 5 });
    expect(again.simsWithMessages().sort()).toEqual([A, B]);
    expect(texts(await again.peek(B, 0, 10))).toEqual(['r1', 'r22']);
  });

  it('commits concurrent appends from many callers in few transactions, each row once and in order per SIM', async () => {
    const { outbox, writer, reopened } = await setup(200);
    const sent = Array.from({ length: 600 }, (_, i) => msg(i % 2 ? A : B, `c${i}`));
    const ids = await Promise.all(sent.map((m) => outbox.enqueue(m)));
    expect(new Set(ids).size).toBe(600);
    expect(writer.requests.length).toBeLessThanOrEqual(6);
    const again = await reopened();
    expect(texts(await again.peek(A, 0, 1000))).toEqual(sent.filter((m) => m.imsi === A).map((m) => m.payload.toString()));
  });
});
