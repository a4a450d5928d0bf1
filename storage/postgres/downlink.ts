import type { HeldMessage } from '../downlink.ts';
import { transaction, type Pool } from './connect.ts';
import { lockInTransaction } from './locks.ts';

const COLUMNS = 'id, topic, payload, qos, received_at AS "receivedAt"';

/**
 * Downlink held for HTTP devices, on PostgreSQL. Unlike the SQLite store (HeldDownlinkStore), pending()
 * answers with a promise: the HTTP ingress must await it before it can run on this store.
 */
export class PgDownlinkStore {
  constructor(private readonly pool: Pool) {}

  /**
   * Holds for one SIM run one at a time (a lock per SIM): under READ COMMITTED two that overlap would each
   * count only their own new row and the committed ones, and cut the wrong ones or too few.
   */
  async hold(imsi: string, msg: Omit<HeldMessage, 'id'>, maxMessages: number, ttlMs: number): Promise<HeldMessage[]> {
    return transaction(this.pool, async (c) => {
      await lockInTransaction(c, 'heldDownlink', imsi);
      await c.query('INSERT INTO downlink (imsi, topic, payload, qos, received_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)', [
        imsi, msg.topic, msg.payload, msg.qos, msg.receivedAt, msg.receivedAt + ttlMs,
      ]);
      const { rows } = await c.query<HeldMessage>(
        `DELETE FROM downlink WHERE id IN (SELECT id FROM downlink WHERE imsi = $1 ORDER BY id DESC OFFSET $2) RETURNING ${COLUMNS}`,
        [imsi, maxMessages],
      );
      return rows.sort((a, b) => b.id - a.id);
    });
  }

  async pending(imsi: string, now = Date.now()): Promise<HeldMessage[]> {
    return (await this.pool.query<HeldMessage>(`SELECT ${COLUMNS} FROM downlink WHERE imsi = $1 AND expires_at > $2 ORDER BY id`, [imsi, now])).rows;
  }

  async remove(ids: number[]): Promise<void> {
    if (ids.length) await this.pool.query('DELETE FROM downlink WHERE id = ANY($1)', [ids]);
  }

  async expire(now = Date.now()): Promise<Array<HeldMessage & { imsi: string }>> {
    const { rows } = await this.pool.query<HeldMessage & { imsi: string }>(`DELETE FROM downlink WHERE expires_at <= $1 RETURNING imsi, ${COLUMNS}`, [now]);
    return rows.sort((a, b) => a.id - b.id);
  }
}
