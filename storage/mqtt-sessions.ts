import type { Db } from './db.ts';
import type { HeldMessage } from './downlink.ts';

/** One persistent MQTT session: a SIM and the client id its device connects with. */
export interface SessionKey {
  imsi: string;
  clientId: string;
}

export interface StoredSession {
  filters: Array<[filter: string, qos: 0 | 1]>;
  /** How long the session outlives its connection. */
  expirySeconds: number;
  /** When it ends; WHILE_CONNECTED while its device is connected. */
  expiresAt: number;
}

/** The expiry of a session whose device is connected: it starts counting when the device leaves. */
export const WHILE_CONNECTED = Number.MAX_SAFE_INTEGER;

export type KeptMessage = HeldMessage & { expiresAt: number };
export type DroppedMessage = KeptMessage & SessionKey;

/** Persistent MQTT sessions and the commands kept for them, bounded in count and age per session. */
export interface MqttSessionStore {
  /** The session, unless it has none or it expired. */
  load(key: SessionKey, now?: number): Promise<StoredSession | undefined>;
  save(key: SessionKey, session: StoredSession): Promise<void>;
  /**
   * Every session not yet expired, or only those of the SIMs named (to take up their subscriptions again:
   * at start-up, or on a node of several as it comes to hold the SIMs).
   */
  list(now?: number, imsis?: string[]): Promise<Array<SessionKey & StoredSession>>;
  /** Ends a session; resolves with the commands it still held, so each can be accounted for. */
  remove(key: SessionKey): Promise<KeptMessage[]>;
  /** Keeps a command; resolves with those pushed out because the session already held maxMessages. */
  keep(key: SessionKey, msg: Omit<HeldMessage, 'id'>, maxMessages: number, expiresAt: number): Promise<KeptMessage[]>;
  /** Commands waiting for a session, oldest first, not yet expired. */
  pending(key: SessionKey, now?: number): Promise<KeptMessage[]>;
  /** Forgets commands the device acknowledged. */
  delivered(ids: number[]): Promise<void>;
  /**
   * Sessions left connected by a run that stopped without seeing them leave start their expiry now: at
   * start-up every one, or only the SIMs named (those a node of several took over from a dead one).
   */
  settle(now?: number, imsis?: string[]): Promise<number>;
  /** Deletes expired commands and sessions; resolves with the sessions ended and the commands dropped. */
  expire(now?: number): Promise<{ sessions: SessionKey[]; messages: DroppedMessage[] }>;
}

const COLUMNS = 'id, topic, payload, qos, received_at AS receivedAt, expires_at AS expiresAt';

/** The condition (and its parameter) that keeps a statement to the SIMs named; none when none are named. */
const onlySims = (imsis?: string[]) => (imsis ? { sql: 'AND imsi IN (SELECT value FROM json_each(?))', params: [JSON.stringify(imsis)] } : { sql: '', params: [] });

/** The SQLite tables (synchronous; the rest of the code sees them as an MqttSessionStore). */
export class SqliteMqttSessions {
  constructor(private readonly db: Db) {}

  load(key: SessionKey, now = Date.now()): StoredSession | undefined {
    const row = this.db
      .prepare('SELECT filters, expiry_s AS expirySeconds, expires_at AS expiresAt FROM mqtt_sessions WHERE imsi = ? AND client_id = ? AND expires_at > ?')
      .get(key.imsi, key.clientId, now) as { filters: string; expirySeconds: number; expiresAt: number } | undefined;
    return row && { filters: JSON.parse(row.filters) as StoredSession['filters'], expirySeconds: row.expirySeconds, expiresAt: row.expiresAt };
  }

  list(now = Date.now(), imsis?: string[]): Array<SessionKey & StoredSession> {
    const only = onlySims(imsis);
    const rows = this.db
      .prepare(`SELECT imsi, client_id AS clientId, filters, expiry_s AS expirySeconds, expires_at AS expiresAt FROM mqtt_sessions WHERE expires_at > ? ${only.sql} ORDER BY imsi, client_id`)
      .all(now, ...only.params) as Array<SessionKey & { filters: string; expirySeconds: number; expiresAt: number }>;
    return rows.map((r) => ({ ...r, filters: JSON.parse(r.filters) as StoredSession['filters'] }));
  }

  save(key: SessionKey, session: StoredSession): void {
    this.db
      .prepare(
        'INSERT INTO mqtt_sessions (imsi, client_id, filters, expiry_s, expires_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (imsi, client_id) DO UPDATE SET filters = excluded.filters, expiry_s = excluded.expiry_s, expires_at = excluded.expires_at',
      )
      .run(key.imsi, key.clientId, JSON.stringify(session.filters), session.expirySeconds, session.expiresAt);
  }

  settle(now = Date.now(), imsis?: string[]): number {
    const only = onlySims(imsis);
    return this.db.prepare(`UPDATE mqtt_sessions SET expires_at = ? + expiry_s * 1000 WHERE expires_at = ? ${only.sql}`).run(now, WHILE_CONNECTED, ...only.params).changes;
  }

  remove(key: SessionKey): KeptMessage[] {
    // A clean start of a device that kept nothing (nearly every connect) writes nothing: a write here runs
    // on the main thread and waits for the outbox writer's commit.
    const kept = this.db
      .prepare('SELECT EXISTS (SELECT 1 FROM mqtt_sessions WHERE imsi = ? AND client_id = ?) OR EXISTS (SELECT 1 FROM mqtt_session_messages WHERE imsi = ? AND client_id = ?) AS kept')
      .get(key.imsi, key.clientId, key.imsi, key.clientId) as { kept: 0 | 1 };
    if (!kept.kept) return [];
    // IMMEDIATE: a transaction that reads first and writes later fails at once (SQLITE_BUSY) when the
    // writer thread commits in between; one that takes the write lock first waits for it instead.
    return this.db.transaction(() => {
      const held = this.db.prepare(`SELECT ${COLUMNS} FROM mqtt_session_messages WHERE imsi = ? AND client_id = ? ORDER BY id`).all(key.imsi, key.clientId) as KeptMessage[];
      this.db.prepare('DELETE FROM mqtt_session_messages WHERE imsi = ? AND client_id = ?').run(key.imsi, key.clientId);
      this.db.prepare('DELETE FROM mqtt_sessions WHERE imsi = ? AND client_id = ?').run(key.imsi, key.clientId);
      return held;
    }).immediate();
  }

  keep(key: SessionKey, msg: Omit<HeldMessage, 'id'>, maxMessages: number, expiresAt: number): KeptMessage[] {
    return this.db.transaction(() => {
      this.db
        .prepare('INSERT INTO mqtt_session_messages (imsi, client_id, topic, payload, qos, received_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(key.imsi, key.clientId, msg.topic, msg.payload, msg.qos, msg.receivedAt, expiresAt);
      const over = this.db
        .prepare(`SELECT ${COLUMNS} FROM mqtt_session_messages WHERE imsi = ? AND client_id = ? ORDER BY id DESC LIMIT -1 OFFSET ?`)
        .all(key.imsi, key.clientId, maxMessages) as KeptMessage[];
      const del = this.db.prepare('DELETE FROM mqtt_session_messages WHERE id = ?');
      for (const m of over) del.run(m.id);
      return over.reverse();
    }).immediate();
  }

  pending(key: SessionKey, now = Date.now()): KeptMessage[] {
    return this.db.prepare(`SELECT ${COLUMNS} FROM mqtt_session_messages WHERE imsi = ? AND client_id = ? AND expires_at > ? ORDER BY id`).all(key.imsi, key.clientId, now) as KeptMessage[];
  }

  delivered(ids: number[]): void {
    if (ids.length === 0) return;
    const del = this.db.prepare('DELETE FROM mqtt_session_messages WHERE id = ?');
    this.db.transaction(() => ids.forEach((id) => del.run(id))).immediate();
  }

  expire(now = Date.now()): { sessions: SessionKey[]; messages: DroppedMessage[] } {
    // The sweep runs whether or not anything is due: only take the write lock (and wait for the outbox
    // writer's commit, on the main thread) when something is.
    const due = this.db
      .prepare('SELECT EXISTS (SELECT 1 FROM mqtt_sessions WHERE expires_at <= ?) OR EXISTS (SELECT 1 FROM mqtt_session_messages WHERE expires_at <= ?) AS due')
      .get(now, now) as { due: 0 | 1 };
    if (!due.due) return { sessions: [], messages: [] };
    return this.db.transaction(() => {
      const sessions = this.db.prepare('SELECT imsi, client_id AS clientId FROM mqtt_sessions WHERE expires_at <= ?').all(now) as SessionKey[];
      const messages = this.db
        .prepare(
          `SELECT m.id, m.imsi, m.client_id AS clientId, m.topic, m.payload, m.qos, m.received_at AS receivedAt, m.expires_at AS expiresAt FROM mqtt_session_messages m
           WHERE m.expires_at <= ? OR EXISTS (SELECT 1 FROM mqtt_sessions s WHERE s.imsi = m.imsi AND s.client_id = m.client_id AND s.expires_at <= ?) ORDER BY m.id`,
        )
        .all(now, now) as DroppedMessage[];
      const del = this.db.prepare('DELETE FROM mqtt_session_messages WHERE id = ?');
      for (const m of messages) del.run(m.id);
      this.db.prepare('DELETE FROM mqtt_sessions WHERE expires_at <= ?').run(now);
      return { sessions, messages };
    }).immediate();
  }
}
