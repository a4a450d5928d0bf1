import { GATEWAY_OUTBOX_KEY } from '../events.ts';
import { GroupCommitOutbox, toMessage, type DeliveryOutbox, type OutboxMessage, type OutboxRow, type Usage } from '../outbox.ts';
import type { CommitRequest, CommitResult, CommitWriter } from '../outbox-commit.ts';
import { batched, CHANNELS, type ChangeFeed } from './changes.ts';
import type { ClusterNode, Gained } from './cluster.ts';
import { transaction, type Pool, type Queryable } from './connect.ts';
import { queuePgEvents } from './events.ts';
import { LOCKS } from './locks.ts';

/**
 * The outbox's commit on PostgreSQL: one transaction for a group (inserts, the SIMs' last-seen times,
 * deletes of delivered rows). It resolves only after COMMIT returned, and every connection runs with
 * synchronous_commit on (storage/postgres/connect.ts): a device is acknowledged only for what the
 * server has flushed.
 *
 * With a fence (several nodes), the commit also serialises inserts per SIM across nodes, takes the
 * leases of SIMs no live node holds, and deletes delivered rows only under the lease epoch they were
 * delivered under (a join on the lease table), so a node that lost a lease cannot delete or reorder what
 * another node now delivers.
 *
 * Run it inside a transaction: when every SIM inserted for is already held (or there is no fence) it is
 * one call of migration 013's function; otherwise the inserts, the claim and the deletes in that order.
 */
export async function commitOnPostgres(db: Queryable, req: CommitRequest, fence?: CommitFence): Promise<FencedCommit> {
  if (fence && claims(req, fence)) return commitClaiming(db, req, fence);
  return { ...(await commitCall(db, req, fence)), claimed: [] };
}

/** A commit's result on PostgreSQL, with what the cluster needs to know of it. */
type FencedCommit = Omit<CommitResult, 'seconds'> & {
  claimed: Gained[];
  /** Per SIM inserted for under the per-SIM locks, its newest row before this commit's (several nodes). */
  prior?: Map<string, number>;
};

/** A commit that may take leases, inside a transaction: the inserts, the claim, then the deletes. */
async function commitClaiming(db: Queryable, req: CommitRequest, fence: CommitFence): Promise<FencedCommit> {
  const { ids, prior } = await commitCall(db, { inserts: req.inserts, deletes: [] }, fence);
  const { claimed } = await fence.claim(db, [...new Set(req.inserts.map((m) => m.imsi))], ids);
  const { deleted } = await commitCall(db, { inserts: [], deletes: req.deletes }, fence);
  return { ids, deleted, claimed, ...(prior ? { prior } : {}) };
}

/** Whether the commit inserts for a SIM this node does not hold (yet): then it must try to claim it. */
function claims({ inserts }: CommitRequest, fence: CommitFence): boolean {
  return inserts.some((m) => !fence.holds(m.imsi));
}


/**
 * One call of simbridge_outbox_commit (migration 013): locks, inserts, last-seen times, deletes. Outside
 * a transaction it is a transaction of its own, committed before the server answers (an error, had the
 * commit failed): the answer is the acknowledgement.
 */
async function commitCall(db: Queryable, { inserts, deletes }: CommitRequest, fence: CommitFence | undefined): Promise<Omit<FencedCommit, 'claimed'>> {
  const n = inserts.length;
  const imsis = new Array<string>(n);
  const topics = new Array<string>(n);
  const payloads = new Array<Buffer>(n);
  const qos = new Array<number>(n);
  const received = new Array<number>(n);
  const systems = new Array<number>(n);
  const properties = new Array<string | null>(n);
  for (let i = 0; i < n; i++) {
    const m = inserts[i]!;
    imsis[i] = m.imsi;
    topics[i] = m.deviceTopic;
    payloads[i] = m.payload;
    qos[i] = m.qos;
    received[i] = m.receivedAt;
    systems[i] = m.system ? 1 : 0;
    properties[i] = m.userProperties ?? null;
  }
  const [deleteImsis, deleteEpochs] = fence && deletes.length ? fence.deliveredUnder(deletes) : [[], []];
  const { rows } = await db.query<{ ids: string[]; deleted: string[]; prior_imsis: string[]; prior_newest: string[] }>({
    name: 'simbridge_outbox_commit',
    text: 'SELECT ids, deleted, prior_imsis, prior_newest FROM simbridge_outbox_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)',
    values: [imsis, topics, payloads, qos, received, systems, properties, fence && n ? LOCKS.simCommit : null, deletes, deleteImsis, deleteEpochs, fence?.node ?? null],
  });
  // bigint[] comes back as text; every id stored is below 2^53.
  const { ids, deleted, prior_imsis: priorImsis, prior_newest: priorNewest } = rows[0]!;
  const gone = new Set(deleted.map(Number));
  const result = { ids: ids.map(Number), deleted: deletes.filter((id) => gone.has(id)) };
  return priorImsis.length ? { ...result, prior: new Map(priorImsis.map((imsi, i) => [imsi, Number(priorNewest[i])])) } : result;
}

/** The cluster's part in a commit on PostgreSQL (storage/postgres/cluster.ts). */
export interface CommitFence {
  node: string;
  /** Whether this node holds the SIM now: a commit inserting only for held SIMs claims nothing. */
  holds(imsi: string): boolean;
  /** Per delivered row, its SIM and the lease epoch it was delivered under (null: under none, so it stays). */
  deliveredUnder(ids: number[]): [imsis: Array<string | null>, epochs: Array<number | null>];
  /** Inside the transaction, after the inserts: takes free leases; tells the owners of the others. */
  claim(c: Queryable, imsis: string[], ownIds: number[]): Promise<{ claimed: Gained[]; foreign: string[] }>;
  /**
   * After COMMIT, before the outbox hears of it: the SIMs claimed are held, the deletes settled, and the
   * SIMs' newest rows before the commit (`prior`) tell of rows other nodes committed for them meanwhile.
   */
  committed(claimed: Gained[], deletes: number[], prior?: Map<string, number>): void;
}

/**
 * Group commit on PostgreSQL: the outbox hands over everything gathered while the previous commit was
 * on its way. When it claims no lease it is one call on a pooled connection, a transaction by itself;
 * otherwise one transaction on one connection (no writer thread: the wait is on the network, not on this
 * event loop).
 */
export function postgresWriter(pool: Pool, observe: (seconds: number) => void = () => undefined, fence: () => CommitFence | undefined = () => undefined): CommitWriter {
  return {
    async commit(req) {
      const started = performance.now();
      const f = fence();
      const { claimed, prior, ...result } =
        f && claims(req, f) ? await transaction(pool, (c) => commitClaiming(c, req, f)) : { ...(await commitCall(pool, req, f)), claimed: [] };
      f?.committed(claimed, req.deletes, prior);
      const seconds = (performance.now() - started) / 1000;
      observe(seconds);
      return { ...result, seconds };
    },
    ready: async () => undefined,
    // The pool belongs to whoever opened it (storage/open.ts).
    close: async () => undefined,
  };
}

const COLUMNS = 'id, imsi, device_topic, payload, qos, received_at, system, user_properties';

/** The outbox on PostgreSQL: the same group commit and counters, reads and removals over the pool. */
export class PgOutbox extends GroupCommitOutbox implements DeliveryOutbox {
  private constructor(
    private readonly pool: Pool,
    writer: CommitWriter,
    maxRows: number,
    maxTailBytes: number,
  ) {
    super(writer, maxRows, maxTailBytes);
  }

  /**
   * Opens the outbox on what the database holds (rows, bytes and newest id per SIM). The tails of just
   * committed rows (GroupCommitOutbox) hold while this node is the only one inserting for a SIM: the
   * cluster must end a SIM's tail when another node may commit for it.
   */
  static async open(pool: Pool, writer: CommitWriter, maxRows = 1000, maxTailBytes = 32 * 1024 * 1024, opts: { cluster?: boolean } = {}): Promise<PgOutbox> {
    const outbox = new PgOutbox(pool, writer, maxRows, maxTailBytes);
    // In a cluster a node counts only the SIMs it holds: they come with their leases (joinCluster).
    if (opts.cluster) return outbox;
    const { rows } = await pool.query<{ imsi: string; rows: number; bytes: number; newest: number }>(
      // The gateway's own events have their own publisher (storage/events.ts).
      'SELECT imsi, count(*) AS rows, sum(octet_length(payload)) AS bytes, max(id) AS newest FROM outbox WHERE imsi <> $1 GROUP BY imsi',
      [GATEWAY_OUTBOX_KEY],
    );
    outbox.loaded(rows);
    return outbox;
  }

  private cluster: ClusterNode | undefined;
  /** Delivered rows waiting for their delete, with the lease epoch each was delivered under. */
  private readonly deliveredUnder = new Map<number, { imsi: string; epoch: number | null }>();
  private readonly wakeListeners: Array<(imsi: string) => void> = [];
  /** SIMs this node held and lost: a cursor it kept for one may have been passed by another node. */
  private readonly lostHere = new Set<string>();
  /**
   * SIMs other nodes hold that this node commits for: their rows and bytes waiting as last read from the
   * database, plus what this node committed for them since, so their quotas hold across nodes.
   */
  private readonly elsewhere = new Map<string, Usage & { readAt: number }>();
  private readonly counting = new Map<string, Promise<void>>();

  /**
   * Several nodes: this node reads, delivers and counts only the SIMs it holds. A SIM gained (taken over,
   * or claimed by a commit) is counted from what the database holds and woken; rows committed here for a
   * SIM another node holds are forgotten here (its owner hears of them); rows another node committed for
   * a SIM held here end its tail (they are read from disk) and wake it. Call before anyone listens to
   * onCommitted: the rows it hands on are those of held SIMs only.
   */
  joinCluster(node: ClusterNode, feed: ChangeFeed, onError: (err: unknown) => void): void {
    this.cluster = node;
    super.onCommitted((rows) => {
      for (const [imsi, list] of rows) {
        if (node.owns(imsi)) continue;
        const there = this.elsewhere.get(imsi);
        for (const row of list) {
          this.leaveTail(row);
          this.account(imsi, -1, -row.payload.length);
          if (there) {
            there.rows += 1;
            there.bytes += row.payload.length;
          }
        }
      }
    });
    node.onGained((gained) => this.gained(gained, true));
    node.onLost((imsis) =>
      imsis.forEach((imsi) => {
        this.dropTail(imsi);
        this.lostHere.add(imsi);
        // Its rows on disk are counted by its next holder now; what this node has still to commit stays counted.
        const committed = this.committedUsage(imsi);
        this.account(imsi, -committed.rows, -committed.bytes);
      }),
    );
    feed.on(CHANNELS.outbox, batched((imsis) => this.committedElsewhere(imsis.filter((i) => node.owns(i))), onError));
  }

  /** The commit's fence, in a cluster. */
  fence(): CommitFence | undefined {
    const node = this.cluster;
    if (!node) return undefined;
    return {
      node: node.nodeId,
      holds: (imsi) => node.owns(imsi),
      deliveredUnder: (ids) => {
        const under = ids.map((id) => this.deliveredUnder.get(id));
        return [under.map((u) => u?.imsi ?? null), under.map((u) => u?.epoch ?? null)];
      },
      claim: (c, imsis, ownIds) => node.claimInCommit(c, imsis, ownIds),
      committed: (claimed, deletes, prior) => {
        for (const id of deletes) this.deliveredUnder.delete(id);
        node.claimed(claimed);
        this.gained(claimed, false);
        if (prior) this.committedBefore(prior);
      },
    };
  }

  /** Held here (or one node alone): what this node counts; held by another node: what waits for it across the nodes. */
  override quotaUsage(imsi: string): Usage {
    const here = this.usage(imsi);
    if (!this.cluster || this.cluster.owns(imsi)) return here;
    const there = this.elsewhere.get(imsi);
    return there ? { rows: here.rows + there.rows, bytes: here.bytes + there.bytes } : here;
  }

  /**
   * A SIM another node holds is counted from the database before its first quota check here; a count
   * older than cluster.quotaRefreshMs answers while it is read again. A SIM held here needs nothing.
   */
  override quotaReady(imsi: string): Promise<void> | undefined {
    const node = this.cluster;
    if (!node || node.owns(imsi)) return undefined;
    const refreshMs = node.opts.quotaRefreshMs ?? 1000;
    const there = this.elsewhere.get(imsi);
    if (there && performance.now() - there.readAt < refreshMs) return undefined;
    const reading = this.counting.get(imsi) ?? this.countElsewhere(imsi, refreshMs);
    return there ? undefined : reading;
  }

  private countElsewhere(imsi: string, refreshMs: number): Promise<void> {
    const reading = this.pool
      .query<{ rows: number; bytes: number }>('SELECT count(*) AS rows, coalesce(sum(octet_length(payload)), 0) AS bytes FROM outbox WHERE imsi = $1', [imsi])
      .then(({ rows: [r] }) => {
        const now = performance.now();
        // Counts long unused are forgotten (read again when the SIM writes here again).
        if (this.elsewhere.size >= 10_000) for (const [k, v] of this.elsewhere) if (now - v.readAt > 10 * refreshMs) this.elsewhere.delete(k);
        if (!this.cluster?.owns(imsi)) this.elsewhere.set(imsi, { rows: Number(r?.rows ?? 0), bytes: Number(r?.bytes ?? 0), readAt: now });
      })
      .finally(() => this.counting.delete(imsi));
    reading.catch(() => undefined); // a refresh in the background fails quietly: the next check reads again
    this.counting.set(imsi, reading);
    return reading;
  }

  /** A SIM of this node has rows it did not commit itself (or was just gained): deliver them. */
  onWake(fn: (imsi: string) => void): void {
    this.wakeListeners.push(fn);
  }

  /**
   * SIMs gained with what they had waiting: their counters become what the database holds (before the
   * commit that claimed them, when one did) and what this node has still to commit for them, that commit's
   * rows included. What this node counted as committed before is replaced: it may be stale (a SIM held
   * again after this node could not be sure it held it).
   */
  private gained(gained: Gained[], whole: boolean): void {
    for (const g of gained) {
      this.elsewhere.delete(g.imsi);
      this.dropTail(g.imsi);
      const u = this.committedUsage(g.imsi);
      this.account(g.imsi, g.rows - u.rows, g.bytes - u.bytes);
      this.newestPerSim.set(g.imsi, Math.max(g.newest, whole ? 0 : (this.newestPerSim.get(g.imsi) ?? 0)));
      // A SIM this node's commit claimed for the first time has no cursor to distrust, and a read from its
      // oldest row would find the rows of a batch still in flight (not yet delivered) and send them again.
      if (whole || this.lostHere.delete(g.imsi)) this.rewound(g.imsi);
      if (whole && g.rows) this.wake(g.imsi);
    }
  }

  /**
   * A held SIM whose newest row before this node's commit is one this node never saw: another node
   * committed for it a moment ago (its notice is on its way). The SIM's tail ends there, so this commit's
   * rows begin a tail after that row, and a read from before it goes to disk instead of passing it.
   */
  private committedBefore(prior: Map<string, number>): void {
    for (const [imsi, newest] of prior) {
      if (!this.cluster?.owns(imsi) || newest <= (this.newestPerSim.get(imsi) ?? 0)) continue;
      this.dropTail(imsi);
      this.newestPerSim.set(imsi, newest);
    }
  }

  private async committedElsewhere(imsis: string[]): Promise<void> {
    if (imsis.length === 0) return;
    const { rows } = await this.pool.query<{ imsi: string; rows: number; bytes: number; newest: number }>(
      'SELECT imsi, count(*) AS rows, sum(octet_length(payload)) AS bytes, max(id) AS newest FROM outbox WHERE imsi = ANY($1::text[]) GROUP BY imsi',
      [imsis],
    );
    // A SIM missing from the answer has nothing waiting any more (another node dropped its oldest rows).
    const counted = new Map(rows.map((r) => [r.imsi, r]));
    for (const r of imsis.map((imsi) => counted.get(imsi) ?? { imsi, rows: 0, bytes: 0, newest: 0 })) {
      this.dropTail(r.imsi);
      const u = this.usage(r.imsi);
      this.account(r.imsi, r.rows - u.rows, r.bytes - u.bytes);
      this.newestPerSim.set(r.imsi, Math.max(r.newest, this.newestPerSim.get(r.imsi) ?? 0));
      this.wake(r.imsi);
    }
  }

  private wake(imsi: string): void {
    for (const fn of this.wakeListeners) fn(imsi);
  }

  override onCommitted(listener: (rows: Map<string, OutboxMessage[]>) => void): void {
    const node = this.cluster;
    if (!node) return super.onCommitted(listener);
    super.onCommitted((rows) => {
      const held = new Map([...rows].filter(([imsi]) => node.owns(imsi)));
      if (held.size) listener(held);
    });
  }

  override remove(rows: OutboxMessage[]): void {
    const node = this.cluster;
    if (node) for (const r of rows) this.deliveredUnder.set(r.id, { imsi: r.imsi, epoch: node.epochOf(r.imsi) ?? null });
    super.remove(rows);
  }

  override simsWithMessages(): string[] {
    const node = this.cluster;
    const sims = super.simsWithMessages();
    return node ? sims.filter((imsi) => node.owns(imsi)) : sims;
  }

  /** Alone, every SIM; in a cluster, the SIMs this node holds. */
  override holds(imsi: string): boolean {
    return !this.cluster || this.cluster.owns(imsi);
  }

  /** As the SQLite outbox: from memory when it knows, else just what is asked, reading on past delivered rows. */
  async peek(imsi: string, afterId: number, limit: number): Promise<OutboxMessage[]> {
    // Another node's SIM (or this node lost it): nothing to deliver here.
    if (!this.holds(imsi)) return [];
    const known = this.fromMemory(imsi, afterId, limit);
    if (known) return known;
    const found: OutboxMessage[] = [];
    for (let after = afterId; ; ) {
      const want = limit - found.length;
      const { rows } = await this.pool.query<OutboxRow>(`SELECT ${COLUMNS} FROM outbox WHERE imsi = $1 AND id > $2 ORDER BY id LIMIT $3`, [imsi, after, want]);
      for (const r of rows) {
        after = r.id;
        if (!this.delivered.has(r.id)) found.push(toMessage(r));
      }
      if (rows.length < want || found.length >= limit) return found;
    }
  }

  async deadLetter(msg: OutboxMessage, reason: string): Promise<void> {
    const moved = await transaction(this.pool, async (c) => {
      const gone = await c.query('DELETE FROM outbox WHERE id = $1', [msg.id]);
      if (gone.rowCount !== 1) return false;
      await c.query('INSERT INTO dead_letters (imsi, device_topic, payload, received_at, reason, failed_at) VALUES ($1, $2, $3, $4, $5, $6)', [
        msg.imsi, msg.deviceTopic, msg.payload, msg.receivedAt, reason, Date.now(),
      ]);
      const message = { id: msg.id, imsi: msg.imsi, deviceTopic: msg.deviceTopic, bytes: msg.payload.length, receivedAt: msg.receivedAt };
      await queuePgEvents(this.pool, c, [{ source: 'outbox', change: 'dead_letter', message, reason, at: Date.now() }]);
      return true;
    });
    if (moved) {
      this.leaveTail(msg);
      this.account(msg.imsi, -1, -msg.payload.length);
      this.removedUndelivered(msg.imsi);
    }
  }

  /**
   * Deletes a SIM's oldest rows until `fits` says there is room, in one transaction; resolves with what was
   * dropped. Rows already delivered (deleted with the next commit) are not dropped again.
   */
  async dropOldest(imsi: string, fits: () => boolean): Promise<OutboxMessage[]> {
    const dropped: OutboxMessage[] = [];
    const delivered = [...this.delivered.keys()];
    // A SIM another node holds: its count here is the one read from the database, and its holder is told.
    const foreign = this.cluster !== undefined && !this.cluster.owns(imsi);
    const there = foreign ? this.elsewhere.get(imsi) : undefined;
    const uncount = (rows: number, bytes: number) => {
      if (!foreign) return this.account(imsi, rows, bytes);
      if (there) {
        there.rows += rows;
        there.bytes += bytes;
      }
    };
    try {
      await transaction(this.pool, async (c) => {
        let after = 0;
        while (!fits()) {
          const { rows } = await c.query<OutboxRow>(
            `DELETE FROM outbox WHERE id = (SELECT id FROM outbox WHERE imsi = $1 AND id > $2 AND id <> ALL($3::bigint[]) ORDER BY id LIMIT 1)
             RETURNING ${COLUMNS}`,
            [imsi, after, delivered],
          );
          const row = rows[0];
          if (!row) break;
          after = row.id;
          // Counted at once so `fits` sees it; given back below if the transaction fails.
          uncount(-1, -row.payload.length);
          dropped.push(toMessage(row));
        }
        // The holder counts again and reads past what was dropped (committedElsewhere).
        if (foreign && dropped.length) await c.query('SELECT pg_notify($1, $2)', [CHANNELS.outbox, imsi]);
      });
    } catch (err) {
      for (const r of dropped) uncount(1, r.payload.length);
      throw err;
    }
    for (const r of dropped) {
      this.leaveTail(r);
      this.removedUndelivered(imsi);
    }
    return dropped;
  }

  async byGroup(): Promise<Array<{ group: string; rows: number; bytes: number; oldestReceivedAt: number | null }>> {
    const { rows } = await this.pool.query(
      `SELECT s.group_name AS "group", count(*) AS rows, sum(octet_length(o.payload)) AS bytes, min(o.received_at) AS "oldestReceivedAt"
       FROM outbox o JOIN sims s ON s.imsi = o.imsi GROUP BY s.group_name`,
    );
    return rows;
  }
}

