import { WHILE_CONNECTED, type DroppedMessage, type KeptMessage, type MqttSessionStore, type SessionKey, type StoredSession } from '../mqtt-sessions.ts';
import type { HeldMessage } from '../downlink.ts';
import { transaction, type Pool } from './connect.ts';
import { lockInTransaction } from './locks.ts';

const COLUMNS = 'id, topic, payload, qos, received_at AS "receivedAt", expires_at AS "expiresAt"';
const SESSION_COLUMNS = 'filters, expiry_s AS "expirySeconds", expires_at AS "expiresAt"';

type SessionRow = { filters: string; expirySeconds: number; expiresAt: number };
const fromRow = (r: SessionRow): StoredSession => ({ filters: JSON.parse(r.filters) as StoredSession['filters'], expirySeconds: r.expirySeconds, expiresAt: r.expiresAt });
const byId = (a: { id: number }, b: { id: number }) => a.id - b.id;

/**
 * Persistent MQTT sessions and the commands kept for them, on PostgreSQL, with the rules of the SQLite
 * store (storage/mqtt-sessions.ts): a session's expiry counts from when its device left, commands are
 * bounded per session (the oldest pushed out) and each one dropped is returned so it can be accounted for.
 */
export class PgMqttSessionStore implements MqttSessionStore {
  constructor(private readonly pool: Pool) {}

  async load(key: SessionKey, now = Date.now()): Promise<StoredSession | undefined> {
    const { rows } = await this.pool.query<SessionRow>(`SELECT ${SESSION_COLUMNS} FROM mqtt_sessions WHERE imsi = $1 AND client_id = $2 AND expires_at > $3`, [key.imsi, key.clientId, now]);
    return rows[0] && fromRow(rows[0]);
  }

  async save(key: SessionKey, session: StoredSession): Promise<void> {
    await this.pool.query(
      `INSERT INTO mqtt_sessions (imsi, client_id, filters, expiry_s, expires_at) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (imsi, client_id) DO UPDATE SET filters = excluded.filters, expiry_s = excluded.expiry_s, expires_at = excluded.expires_at`,
      [key.imsi, key.clientId, JSON.stringify(session.filters), session.expirySeconds, session.expiresAt],
    );
  }

  async list(now = Date.now(), imsis?: string[]): Promise<Array<SessionKey & StoredSession>> {
    const { rows } = await this.pool.query<SessionKey & SessionRow>(
      `SELECT imsi, client_id AS "clientId", ${SESSION_COLUMNS} FROM mqtt_sessions
       WHERE expires_at > $1 AND ($2::text[] IS NULL OR imsi = ANY($2::text[])) ORDER BY imsi, client_id`,
      [now, imsis ?? null],
    );
    return rows.map((r) => ({ imsi: r.imsi, clientId: r.clientId, ...fromRow(r) }));
  }

  async remove(key: SessionKey): Promise<KeptMessage[]> {
    // Nearly every connect is a clean start of a device that kept nothing: two deletes that find nothing.
    return transaction(this.pool, async (c) => {
      const { rows } = await c.query<KeptMessage>(`DELETE FROM mqtt_session_messages WHERE imsi = $1 AND client_id = $2 RETURNING ${COLUMNS}`, [key.imsi, key.clientId]);
      await c.query('DELETE FROM mqtt_sessions WHERE imsi = $1 AND client_id = $2', [key.imsi, key.clientId]);
      return rows.sort(byId);
    });
  }

  /**
   * Keeps for one session run one at a time (a lock per session): under READ COMMITTED two that overlap
   * would each count only their own new row and the committed ones, and the session would end up holding
   * more than maxMessages with nothing pushed out.
   */
  async keep(key: SessionKey, msg: Omit<HeldMessage, 'id'>, maxMessages: number, expiresAt: number): Promise<KeptMessage[]> {
    return transaction(this.pool, async (c) => {
      await lockInTransaction(c, 'mqttSession', `${key.imsi}/${key.clientId}`);
      await c.query('INSERT INTO mqtt_session_messages (imsi, client_id, topic, payload, qos, received_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)', [
        key.imsi, key.clientId, msg.topic, msg.payload, msg.qos, msg.receivedAt, expiresAt,
      ]);
      const { rows } = await c.query<KeptMessage>(
        `DELETE FROM mqtt_session_messages WHERE id IN (SELECT id FROM mqtt_session_messages WHERE imsi = $1 AND client_id = $2 ORDER BY id DESC OFFSET $3) RETURNING ${COLUMNS}`,
        [key.imsi, key.clientId, maxMessages],
      );
      return rows.sort(byId);
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
    if (ids.length) await this.pool.query('DELETE FROM mqtt_session_messages WHERE id = ANY($1)', [ids]);
  }

  async settle(now = Date.now(), imsis?: string[]): Promise<number> {
    const r = await this.pool.query('UPDATE mqtt_sessions SET expires_at = $1 + expiry_s * 1000 WHERE expires_at = $2 AND ($3::text[] IS NULL OR imsi = ANY($3::text[]))', [
      now,
      WHILE_CONNECTED,
      imsis ?? null,
    ]);
    return r.rowCount ?? 0;
  }

  async expire(now = Date.now()): Promise<{ sessions: SessionKey[]; messages: DroppedMessage[] }> {
    return transaction(this.pool, async (c) => {
      // Commands first: those of sessions that end now go with them.
      const messages = await c.query<DroppedMessage>(
        `DELETE FROM mqtt_session_messages m WHERE m.expires_at <= $1
           OR EXISTS (SELECT 1 FROM mqtt_sessions s WHERE s.imsi = m.imsi AND s.client_id = m.client_id AND s.expires_at <= $1)
         RETURNING m.id, m.imsi, m.client_id AS "clientId", m.topic, m.payload, m.qos, m.received_at AS "receivedAt", m.expires_at AS "expiresAt"`,
        [now],
      );
      const sessions = await c.query<SessionKey>('DELETE FROM mqtt_sessions WHERE expires_at <= $1 RETURNING imsi, client_id AS "clientId"', [now]);
      return { sessions: sessions.rows.sort((a, b) => (a.imsi + a.clientId < b.imsi + b.clientId ? -1 : 1)), messages: messages.rows.sort(byId) };
    });
  }
}
