import { GATEWAY_OUTBOX_KEY } from '../events.ts';
import { GroupCommitOutbox, toMessage, type DeliveryOutbox, type OutboxMessage, type OutboxRow } from '../outbox.ts';
import type { CommitRequest, CommitResult, CommitWriter } from '../outbox-commit.ts';
import { transaction, type Pool, type Queryable } from './connect.ts';

/**
 * The outbox's commit on PostgreSQL: one transaction for a group (inserts, the SIMs' last-seen times,
 * deletes of delivered rows). It resolves only after COMMIT returned, and every connection runs with
 * synchronous_commit on (storage/postgres/connect.ts): a device is acknowledged only for what the
 * server has flushed.
 *
 * For the cluster, the deletes gain a fence in this same statement: only rows of SIMs whose lease this
 * node holds at the epoch it was granted (a join on the lease table), so a node that lost a lease cannot
 * delete or reorder what another node now delivers.
 */
export async function commitOnPostgres(db: Queryable, { inserts, deletes }: CommitRequest): Promise<Omit<CommitResult, 'seconds'>> {
  let ids: number[] = [];
  if (inserts.length) {
    // Identity values are drawn in the order the rows are produced (by ordinality): sorted, they match the inputs.
    const { rows } = await db.query<{ id: number }>(
      `INSERT INTO outbox (imsi, device_topic, payload, qos, received_at, system, user_properties)
       SELECT imsi, device_topic, payload, qos, received_at, system, user_properties
       FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::bigint[], $6::int[], $7::text[])
         WITH ORDINALITY AS m(imsi, device_topic, payload, qos, received_at, system, user_properties, n)
       ORDER BY n RETURNING id`,
      [
        inserts.map((m) => m.imsi),
        inserts.map((m) => m.deviceTopic),
        inserts.map((m) => m.payload),
        inserts.map((m) => m.qos),
        inserts.map((m) => m.receivedAt),
        inserts.map((m) => (m.system ? 1 : 0)),
        inserts.map((m) => m.userProperties ?? null),
      ],
    );
    ids = rows.map((r) => r.id).sort((a, b) => a - b);
    // The SIMs' last message time rides in the same transaction. Rows are locked in IMSI order, so two
    // nodes committing for the same SIMs cannot deadlock.
    const last = new Map<string, number>();
    for (const m of inserts) if (!m.system) last.set(m.imsi, Math.max(last.get(m.imsi) ?? 0, m.receivedAt));
    if (last.size) {
      const sims = [...last.keys()].sort();
      await db.query(
        `UPDATE sims SET last_seen_at = greatest(coalesce(sims.last_seen_at, 0), v.at)
         FROM unnest($1::text[], $2::bigint[]) AS v(imsi, at) WHERE sims.imsi = v.imsi`,
        [sims, sims.map((s) => last.get(s)!)],
      );
    }
  }
  let deleted: number[] = [];
  if (deletes.length) {
    const { rows } = await db.query<{ id: number }>('DELETE FROM outbox WHERE id = ANY($1::bigint[]) RETURNING id', [deletes]);
    const gone = new Set(rows.map((r) => r.id));
    deleted = deletes.filter((id) => gone.has(id));
  }
  return { ids, deleted };
}

/**
 * Group commit on PostgreSQL: the outbox hands over everything gathered while the previous commit was
 * on its way, and it goes in one transaction on one pooled connection (no writer thread: the wait is on
 * the network, not on this event loop).
 */
export function postgresWriter(pool: Pool, observe: (seconds: number) => void = () => undefined): CommitWriter {
  return {
    async commit(req) {
      const started = performance.now();
      const result = await transaction(pool, (c) => commitOnPostgres(c, req));
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
  static async open(pool: Pool, writer: CommitWriter, maxRows = 1000, maxTailBytes = 32 * 1024 * 1024): Promise<PgOutbox> {
    const outbox = new PgOutbox(pool, writer, maxRows, maxTailBytes);
    const { rows } = await pool.query<{ imsi: string; rows: number; bytes: number; newest: number }>(
      // The gateway's own events have their own publisher (storage/events.ts).
      'SELECT imsi, count(*) AS rows, sum(octet_length(payload)) AS bytes, max(id) AS newest FROM outbox WHERE imsi <> $1 GROUP BY imsi',
      [GATEWAY_OUTBOX_KEY],
    );
    outbox.loaded(rows);
    return outbox;
  }

  /** As the SQLite outbox: from memory when it knows, else just what is asked, reading on past delivered rows. */
  async peek(imsi: string, afterId: number, limit: number): Promise<OutboxMessage[]> {
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
          this.account(imsi, -1, -row.payload.length);
          dropped.push(toMessage(row));
        }
      });
    } catch (err) {
      for (const r of dropped) this.account(imsi, 1, r.payload.length);
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

