import type { Db } from './db.ts';

export interface NewMessage {
  imsi: string;
  deviceTopic: string;
  payload: Buffer;
  qos: 0 | 1;
  receivedAt: number;
}

export interface OutboxMessage extends NewMessage {
  id: number;
}

interface Pending {
  msg: NewMessage;
  resolve: (id: number) => void;
  reject: (err: Error) => void;
}

/**
 * The durable uplink queue. Writes are group-committed: every enqueue made during one event-loop turn
 * (up to maxRows) shares one transaction, and each promise settles only after that commit, so a device
 * is acknowledged only for what is on disk while synchronous=FULL commits stay few.
 */
export class Outbox {
  private pending: Pending[] = [];
  private flushScheduled = false;
  private readonly insertStmt;
  private readonly peekStmt;
  private readonly deleteStmt;
  private readonly committedListeners: Array<(imsis: Set<string>) => void> = [];

  constructor(
    private readonly db: Db,
    private readonly maxRows = 1000,
  ) {
    this.insertStmt = db.prepare(
      'INSERT INTO outbox (imsi, device_topic, payload, qos, received_at) VALUES (?, ?, ?, ?, ?)',
    );
    this.peekStmt = db.prepare(
      'SELECT id, imsi, device_topic, payload, qos, received_at FROM outbox WHERE imsi = ? AND id > ? ORDER BY id LIMIT ?',
    );
    this.deleteStmt = db.prepare('DELETE FROM outbox WHERE id = ?');
  }

  /** Resolves with the row id once the message is committed. */
  enqueue(msg: NewMessage): Promise<number> {
    return new Promise((resolve, reject) => {
      this.pending.push({ msg, resolve, reject });
      if (this.pending.length >= this.maxRows) this.flush();
      else if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Called with the SIMs that got new rows, after each commit. */
  onCommitted(listener: (imsis: Set<string>) => void): void {
    this.committedListeners.push(listener);
  }

  /** Commits what is pending now (also used at shutdown). */
  flush(): void {
    this.flushScheduled = false;
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    let ids: number[];
    try {
      ids = this.db.transaction(() =>
        batch.map(({ msg }) =>
          Number(this.insertStmt.run(msg.imsi, msg.deviceTopic, msg.payload, msg.qos, msg.receivedAt).lastInsertRowid),
        ),
      )();
    } catch (err) {
      for (const p of batch) p.reject(err as Error);
      return;
    }
    batch.forEach((p, i) => p.resolve(ids[i]));
    const imsis = new Set(batch.map((p) => p.msg.imsi));
    for (const listener of this.committedListeners) listener(imsis);
  }

  /** The oldest messages of one SIM after a given id, in order. */
  peek(imsi: string, afterId: number, limit: number): OutboxMessage[] {
    const rows = this.peekStmt.all(imsi, afterId, limit) as Array<{
      id: number; imsi: string; device_topic: string; payload: Buffer; qos: 0 | 1; received_at: number;
    }>;
    return rows.map((r) => ({ id: r.id, imsi: r.imsi, deviceTopic: r.device_topic, payload: r.payload, qos: r.qos, receivedAt: r.received_at }));
  }

  /** Removes delivered rows. */
  remove(ids: number[]): void {
    if (ids.length === 0) return;
    this.db.transaction(() => {
      for (const id of ids) this.deleteStmt.run(id);
    })();
  }

  /** Moves a row to the dead letters with the reason it can never be delivered. */
  deadLetter(msg: OutboxMessage, reason: string): void {
    this.db.transaction(() => {
      this.db
        .prepare('INSERT INTO dead_letters (imsi, device_topic, payload, received_at, reason, failed_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(msg.imsi, msg.deviceTopic, msg.payload, msg.receivedAt, reason, Date.now());
      this.deleteStmt.run(msg.id);
    })();
  }

  /** SIMs that have queued messages (used at start-up to resume delivery). */
  simsWithMessages(): string[] {
    return this.db.prepare('SELECT DISTINCT imsi FROM outbox').pluck().all() as string[];
  }

  depth(): { rows: number; bytes: number; oldestReceivedAt: number | null } {
    const r = this.db
      .prepare('SELECT COUNT(*) AS rows, COALESCE(SUM(LENGTH(payload)), 0) AS bytes, MIN(received_at) AS oldest FROM outbox')
      .get() as { rows: number; bytes: number; oldest: number | null };
    return { rows: r.rows, bytes: r.bytes, oldestReceivedAt: r.oldest };
  }
}
