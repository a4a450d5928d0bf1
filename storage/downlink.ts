import type { Db } from './db.ts';

export interface HeldMessage {
  id: number;
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  receivedAt: number;
}

/** Downlink held for HTTP devices, bounded in count and age per device. */
export interface HeldDownlinkStore {
  /** Holds a message; resolves with the messages pushed out because the device already held maxMessages. */
  hold(imsi: string, msg: Omit<HeldMessage, 'id'>, maxMessages: number, ttlMs: number): Promise<HeldMessage[]>;
  /**
   * Messages waiting for a device, oldest first, not yet expired. Synchronous: the HTTP ingress reads it
   * on every request and answers at once; an asynchronous store needs that ingress to await it first.
   */
  pending(imsi: string, now?: number): HeldMessage[];
  /** Forgets messages once their response reached the device. */
  remove(ids: number[]): Promise<void>;
  /** Deletes expired messages; resolves with them so each can be accounted for. */
  expire(now?: number): Promise<Array<HeldMessage & { imsi: string }>>;
}

/** The SQLite downlink table (synchronous; the rest of the code sees it as a HeldDownlinkStore). */
export class DownlinkStore {
  private readonly pendingStmt;
  /**
   * SIMs that may hold messages: every hold adds its SIM, and a read that finds none removes it, so the
   * request of a device holding nothing (nearly all of them) costs no query.
   */
  private readonly mayHold: Set<string>;

  constructor(private readonly db: Db) {
    // Read on every HTTP request: prepared once.
    this.pendingStmt = db.prepare('SELECT id, topic, payload, qos, received_at AS receivedAt FROM downlink WHERE imsi = ? AND expires_at > ? ORDER BY id');
    this.mayHold = new Set(db.prepare('SELECT DISTINCT imsi FROM downlink').pluck().all() as string[]);
  }

  /** Holds a message; returns the messages pushed out because the device already held maxMessages. */
  hold(imsi: string, msg: Omit<HeldMessage, 'id'>, maxMessages: number, ttlMs: number): HeldMessage[] {
    this.mayHold.add(imsi);
    return this.db.transaction(() => {
      this.db
        .prepare('INSERT INTO downlink (imsi, topic, payload, qos, received_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(imsi, msg.topic, msg.payload, msg.qos, msg.receivedAt, msg.receivedAt + ttlMs);
      const over = this.db
        .prepare('SELECT id, topic, payload, qos, received_at AS receivedAt FROM downlink WHERE imsi = ? ORDER BY id DESC LIMIT -1 OFFSET ?')
        .all(imsi, maxMessages) as HeldMessage[];
      for (const m of over) this.db.prepare('DELETE FROM downlink WHERE id = ?').run(m.id);
      return over;
    }).immediate();
  }

  /** Messages waiting for a device, oldest first, not yet expired. */
  pending(imsi: string, now = Date.now()): HeldMessage[] {
    if (!this.mayHold.has(imsi)) return [];
    const held = this.pendingStmt.all(imsi, now) as HeldMessage[];
    if (held.length === 0) this.mayHold.delete(imsi);
    return held;
  }

  /** Forgets messages once their response reached the device. */
  remove(ids: number[]): void {
    if (ids.length === 0) return;
    const del = this.db.prepare('DELETE FROM downlink WHERE id = ?');
    this.db.transaction(() => ids.forEach((id) => del.run(id)))();
  }

  /** Deletes expired messages; returns them so each can be accounted for. */
  expire(now = Date.now()): Array<HeldMessage & { imsi: string }> {
    return this.db.transaction(() => {
      const rows = this.db
        .prepare('SELECT id, imsi, topic, payload, qos, received_at AS receivedAt FROM downlink WHERE expires_at <= ?')
        .all(now) as Array<HeldMessage & { imsi: string }>;
      this.db.prepare('DELETE FROM downlink WHERE expires_at <= ?').run(now);
      return rows;
    }).immediate();
  }
}
