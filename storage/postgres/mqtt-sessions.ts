import type { HeldMessage } from '../downlink.ts';
import type { DroppedMessage, KeptMessage, MqttSessionStore, SessionKey, StoredSession } from '../mqtt-sessions.ts';
import { WHILE_CONNECTED } from '../mqtt-sessions.ts';
import { transaction, type Pool } from './connect.ts';
import { changed } from './params.ts';

const COLUMNS = 'id, topic, payload, qos, received_at AS "receivedAt", expires_at AS "expiresAt"';

/** Persistent MQTT sessions and their kept commands on PostgreSQL, with the rules of storage/mqtt-sessions.ts. */
export class PgMqttSessions implements MqttSessionStore {
  constructor(private readonly pool: Pool) {}

  async load(key: SessionKey, now = Date.now()): Promise<StoredSession | undefined> {
    const { rows } = await this.pool.query<{ filters: string; expirySeconds: number; expiresAt: number }>(
      'SELECT filters, expiry_s AS "expirySeconds", expires_at AS "expiresAt" FROM mqtt_sessions WHERE imsi = $1 AND client_id = $2 AND expires_at > $3',
      [key.imsi, key.clientId, now],
    );
    const row = rows[0];
    return row && { filters: JSON.parse(row.filters) as StoredSession['filters'], expirySeconds: row.expirySeconds, expiresAt: row.expiresAt };
  }

  async list(now = Date.now()): Promise<Array<SessionKey & StoredSession>> {
    const { rows } = await this.pool.query<SessionKey & { filters: string; expirySeconds: number; expiresAt: number }>(
      `SELECT imsi, client_id AS "clientId", filters, expiry_s AS "expirySeconds", expires_at AS "expiresAt" FROM mqtt_sessions
       WHERE expires_at > $1 ORDER BY imsi COLLATE "C", client_id COLLATE "C"`,
      [now],
    );
    return rows.map((r) => ({ ...r, filters: JSON.parse(r.filters) as StoredSession['filters'] }));
  }

  async save(key: SessionKey, session: StoredSession): Promise<void> {
    await this.pool.query(
      `INSERT INTO mqtt_sessions (imsi, client_id, filters, expiry_s, expires_at) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (imsi, client_id) DO UPDATE SET filters = excluded.filters, expiry_s = excluded.expiry_s, expires_at = excluded.expires_at`,
      [key.imsi, key.clientId, JSON.stringify(session.filters), session.expirySeconds, session.expiresAt],
    );
  }

  async settle(now = Date.now()): Promise<number> {
    return changed(await this.pool.query('UPDATE mqtt_sessions SET expires_at = $1 + expiry_s * 1000 WHERE expires_at = $2', [now, WHILE_CONNECTED]));
  }

  async remove(key: SessionKey): Promise<KeptMessage[]> {
    return transaction(this.pool, async (c) => {
      const { rows } = await c.query<KeptMessage>(`DELETE FROM mqtt_session_messages WHERE imsi = $1 AND client_id = $2 RETURNING ${COLUMNS}`, [key.imsi, key.clientId]);
      await c.query('DELETE FROM mqtt_sessions WHERE imsi = $1 AND client_id = $2', [key.imsi, key.clientId]);
      return rows.sort((a, b) => a.id - b.id);
    });
  }

  async keep(key: SessionKey, msg: Omit<HeldMessage, 'id'>, maxMessages: number, expiresAt: number): Promise<KeptMessage[]> {
    return transaction(this.pool, async (c) => {
      await c.query('INSERT INTO mqtt_session_messages (imsi, client_id, topic, payload, qos, received_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)', [
        key.imsi, key.clientId, msg.topic, msg.payload, msg.qos, msg.receivedAt, expiresAt,
      ]);
      const { rows } = await c.query<KeptMessage>(
        `DELETE FROM mqtt_session_messages WHERE id IN
           (SELECT id FROM mqtt_session_messages WHERE imsi = $1 AND client_id = $2 ORDER BY id DESC OFFSET $3)
         RETURNING ${COLUMNS}`,
        [key.imsi, key.clientId, maxMessages],
      );
      return rows.sort((a, b) => a.id - b.id);
    });
  }

  async pending(key: SessionKey, now = Date.now()): Promise<KeptMessage[]> {
    const { rows } = await this.pool.query<KeptMessage>(
      `SELECT ${COLUMNS} FROM mqtt_session_messages WHERE imsi = $1 AND client_id = $2 AND expires_at > $3 ORDER BY id`,
      [key.imsi, key.clientId, now],
    );
    return rows;
  }

  async delivered(ids: number[]): Promise<void> {
    if (ids.length) await this.pool.query('DELETE FROM mqtt_session_messages WHERE id = ANY($1::bigint[])', [ids]);
  }

  async expire(now = Date.now()): Promise<{ sessions: SessionKey[]; messages: DroppedMessage[] }> {
    return transaction(this.pool, async (c) => {
      const sessions = (await c.query<SessionKey>('DELETE FROM mqtt_sessions WHERE expires_at <= $1 RETURNING imsi, client_id AS "clientId"', [now])).rows;
      // A session ended above takes its commands with it, as do commands past their own expiry.
      const { rows } = await c.query<DroppedMessage>(
        `DELETE FROM mqtt_session_messages m
         WHERE m.expires_at <= $1 OR (m.imsi, m.client_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))
         RETURNING m.id, m.imsi, m.client_id AS "clientId", m.topic, m.payload, m.qos, m.received_at AS "receivedAt", m.expires_at AS "expiresAt"`,
        [now, sessions.map((s) => s.imsi), sessions.map((s) => s.clientId)],
      );
      return { sessions, messages: rows.sort((a, b) => a.id - b.id) };
    });
  }
}
