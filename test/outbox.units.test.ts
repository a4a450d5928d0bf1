// The outbox in process, on a real SQLite file in a temp dir; commits run in this thread through the
// same transaction the writer thread runs (storage/outbox-commit.ts), behind a writer the test can hold.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openDatabase, type Db } from '../storage/db.ts';
import { Outbox, type NewMessage, type OutboxMessage } from '../storage/outbox.ts';
import { committer, type CommitRequest, type CommitResult, type CommitWriter } from '../storage/outbox-commit.ts';

const A = '001010000000201';
const B = '001010000000202';

/** A writer committing in this thread; while `held`, commits wait until released (or failed). */
class TestWriter implements CommitWriter {
  readonly requests: CommitRequest[] = [];
  held = false;
  private readonly waiting: Array<{ go: () => void; fail: (err: Error) => void }> = [];
  private readonly run: (req: CommitRequest) => CommitResult;

  constructor(db: Db) {
    this.run = committer(db);
  }

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

  get waitingCommits(): number {
    return this.waiting.length;
  }

  async ready(): Promise<void> {}
  async close(): Promise<void> {}
}

const cleanups: Array<() => void> = [];
afterEach(() => cleanups.splice(0).forEach((c) => c()));

function setup(maxRows = 1000, maxTailBytes?: number) {
  const dir = mkdtempSync(join(tmpdir(), 'simbridge-outbox-'));
  const db = openDatabase({ file: join(dir, 'simbridge.db'), synchronous: 'normal' });
  const writer = new TestWriter(db);
  const outbox = new Outbox(db, writer, maxRows, maxTailBytes);
  cleanups.push(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });
  /** What a restart would find: a new outbox on the same database. */
  const reopened = () => new Outbox(db, new TestWriter(db));
  return { db, writer, outbox, reopened };
}

const msg = (imsi: string, text: string, receivedAt = Date.now()): NewMessage => ({ imsi, deviceTopic: 'meter', payload: Buffer.from(text), qos: 1, receivedAt });
const texts = (rows: OutboxMessage[]) => rows.map((r) => r.payload.toString());
const tick = () => new Promise((r) => setImmediate(r));

describe('the outbox', () => {
  it('group-commits what is enqueued together and settles each promise only after the commit', async () => {
    const { outbox, writer, reopened } = setup();
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
    expect(reopened().usage().rows).toBe(0);
    // Counted while pending: quota checks see what waits for the disk too.
    expect(outbox.usage(A)).toEqual({ rows: 3, bytes: 6 });
    writer.release();
    const got = await Promise.all(ids);
    expect(got).toEqual([...got].sort((x, y) => x - y));
    expect(reopened().usage()).toEqual({ rows: 4, bytes: 8 });
    expect(committed).toHaveLength(1);
    expect(texts(committed[0]!.get(A)!)).toEqual(['a1', 'a2', 'a3']);
    expect(texts(committed[0]!.get(B)!)).toEqual(['b1']);
  });

  it('gathers what arrives during a commit into the next one, at most maxRows each', async () => {
    const { outbox, writer } = setup(3);
    writer.held = true;
    const first = outbox.enqueue(msg(A, 'x0'));
    await tick();
    const more = Array.from({ length: 5 }, (_, i) => outbox.enqueue(msg(A, `x${i + 1}`)));
    await tick();
    expect(writer.requests).toHaveLength(1);
    writer.release();
    await first;
    await new Promise((r) => setTimeout(r, 5));
    writer.release();
    await new Promise((r) => setTimeout(r, 5));
    writer.release();
    await Promise.all(more);
    expect(writer.requests.map((r) => r.inserts.length)).toEqual([1, 3, 2]);
    expect(texts(outbox.peek(A, 0, 10))).toEqual(['x0', 'x1', 'x2', 'x3', 'x4', 'x5']);
  });

  it('fails the promises of a commit that fails, and stops counting those messages', async () => {
    const { outbox, writer } = setup();
    writer.held = true;
    const p = outbox.enqueue(msg(A, 'lost'));
    await tick();
    writer.fail(new Error('disk full'));
    await expect(p).rejects.toThrow('disk full');
    expect(outbox.usage()).toEqual({ rows: 0, bytes: 0 });
  });

  it('peeks a SIM\'s rows in order after an id; delivered rows are never peeked again and leave with the next commit', async () => {
    const { outbox, reopened } = setup();
    const ids = await Promise.all(['m0', 'm1', 'm2', 'm3'].map((t) => outbox.enqueue(msg(A, t))));
    await outbox.enqueue(msg(B, 'other'));
    expect(texts(outbox.peek(A, 0, 10))).toEqual(['m0', 'm1', 'm2', 'm3']);
    expect(texts(outbox.peek(A, ids[1]!, 1))).toEqual(['m2']);
    expect(outbox.peek(A, ids[3]!, 10)).toEqual([]);
    outbox.remove(outbox.peek(A, 0, 2));
    expect(texts(outbox.peek(A, 0, 2))).toEqual(['m2', 'm3']);
    // Still on disk until the commit that deletes them.
    expect(reopened().usage(A).rows).toBe(4);
    await outbox.settle();
    expect(reopened().usage(A).rows).toBe(2);
    expect(outbox.usage(A)).toEqual({ rows: 2, bytes: 4 });
    expect(outbox.removals(A)).toBe(0);
    expect(outbox.simsWithMessages().sort()).toEqual([A, B]);
  });

  it.each([
    ['from the tail of committed rows', undefined],
    ['from disk, the tail held to 5 bytes', 5],
  ])('skips a delivered row between undelivered ones and reads on past it, %s', async (_how, maxTailBytes) => {
    const { outbox, reopened } = setup(1000, maxTailBytes);
    const ids = await Promise.all(['m0', 'm1', 'm2', 'm3'].map((t) => outbox.enqueue(msg(A, t))));
    outbox.remove(outbox.peek(A, ids[0]!, 2));
    expect(texts(outbox.peek(A, 0, 2))).toEqual(['m0', 'm3']);
    expect(texts(outbox.peek(A, ids[0]!, 1))).toEqual(['m3']);
    expect(texts(outbox.peek(A, 0, 10))).toEqual(['m0', 'm3']);
    await outbox.settle();
    expect(texts(outbox.peek(A, 0, 10))).toEqual(['m0', 'm3']);
    expect(texts(reopened().peek(A, 0, 10))).toEqual(['m0', 'm3']);
    // Rows committed after a restart's backlog follow it.
    const later = await outbox.enqueue(msg(A, 'm4'));
    expect(texts(outbox.peek(A, 0, 10))).toEqual(['m0', 'm3', 'm4']);
    expect(texts(outbox.peek(A, ids[3]!, 10))).toEqual(['m4']);
    outbox.remove(outbox.peek(A, 0, 10));
    expect(outbox.peek(A, 0, 10)).toEqual([]);
    await outbox.settle();
    expect(reopened().usage(A).rows).toBe(0);
    expect(later).toBeGreaterThan(ids[3]!);
  });

  it('moves a row to the dead letters once, with its reason, and counts it as a removal', async () => {
    const { outbox, db, reopened } = setup();
    await Promise.all(['d0', 'd1'].map((t) => outbox.enqueue(msg(A, t))));
    const [row] = outbox.peek(A, 0, 1);
    outbox.deadLetter(row!, 'refused upstream 5 times');
    outbox.deadLetter(row!, 'again');
    expect(outbox.removals(A)).toBe(1);
    expect(texts(outbox.peek(A, 0, 10))).toEqual(['d1']);
    expect(outbox.usage(A).rows).toBe(1);
    expect(reopened().usage(A).rows).toBe(1);
    const dead = db.prepare('SELECT imsi, payload, reason FROM dead_letters').all() as Array<{ imsi: string; payload: Buffer; reason: string }>;
    expect(dead.map((d) => [d.imsi, d.payload.toString(), d.reason])).toEqual([[A, 'd0', 'refused upstream 5 times']]);
  });

  it('drops a SIM\'s oldest rows until there is room, counting each as a removal', async () => {
    const { outbox, reopened } = setup();
    await Promise.all(['o0', 'o1', 'o2', 'o3'].map((t) => outbox.enqueue(msg(A, t))));
    const dropped = outbox.dropOldest(A, () => outbox.usage(A).rows <= 2);
    expect(texts(dropped)).toEqual(['o0', 'o1']);
    expect(outbox.removals(A)).toBe(2);
    expect(outbox.removals(B)).toBe(0);
    expect(texts(outbox.peek(A, 0, 10))).toEqual(['o2', 'o3']);
    expect(reopened().usage(A).rows).toBe(2);
  });

  it('finds after a restart what was left, per SIM', async () => {
    const { outbox, reopened } = setup();
    await Promise.all([msg(A, 'r0'), msg(B, 'r1'), msg(B, 'r22')].map((m) => outbox.enqueue(m)));
    const again = reopened();
    expect(again.usage(A)).toEqual({ rows: 1, bytes: 2 });
    expect(again.usage(B)).toEqual({ rows: 2, bytes: 5 });
    expect(again.simsWithMessages().sort()).toEqual([A, B]);
    expect(texts(again.peek(B, 0, 10))).toEqual(['r1', 'r22']);
  });
});
