import type { Db, OpenOptions } from './db.ts';
import type { NewMessage } from './outbox.ts';
import { bytesToPost, WorkerCalls, siblingModule } from '../lib/worker-calls.ts';

/** One group commit: new rows, and rows delivered upstream to delete. */
export interface CommitRequest {
  inserts: NewMessage[];
  deletes: number[];
  /** SIMs whose first message since their binding (to that IMEI) reached IoT Core, and when (SimStore.markDelivered). */
  firstDeliveries?: Array<[imsi: string, at: number, boundImei: string | null]>;
}

/** A commit as it travels to the writer thread: payloads as text (bytesToPost). */
export interface PostedCommit extends Omit<CommitRequest, 'inserts'> {
  inserts: Array<Omit<NewMessage, 'payload'> & { payload: string }>;
}

export interface CommitResult {
  /** Row ids of the inserts, in order. */
  ids: number[];
  /** The deletes that removed a row (a row may have been dropped meanwhile). */
  deleted: number[];
  /** How long the transaction took, in seconds. */
  seconds: number;
}

/** The outbox's write transaction on a connection: inserts, the SIMs' last-seen times, deletes. */
export function committer(db: Db): (req: CommitRequest) => CommitResult {
  const insert = db.prepare('INSERT INTO outbox (imsi, device_topic, payload, qos, received_at, system, user_properties) VALUES (?, ?, ?, ?, ?, ?, ?)');
  const seen = db.prepare('UPDATE sims SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?) WHERE imsi = ?');
  const remove = db.prepare('DELETE FROM outbox WHERE id = ?');
  // Not when the SIM was bound to another device meanwhile: that binding waits for its own first delivery.
  const delivered = db.prepare('UPDATE sims SET delivered_at = ? WHERE imsi = ? AND delivered_at IS NULL AND bound_imei IS ?');
  const transaction = db.transaction(({ inserts, deletes, firstDeliveries = [] }: CommitRequest): Omit<CommitResult, 'seconds'> => {
    const ids = inserts.map((m) => Number(insert.run(m.imsi, m.deviceTopic, m.payload, m.qos, m.receivedAt, m.system ? 1 : 0, m.userProperties ?? null).lastInsertRowid));
    // The SIMs' last message time rides in the same transaction as their messages: no extra commit.
    const last = new Map<string, number>();
    for (const m of inserts) if (!m.system) last.set(m.imsi, Math.max(last.get(m.imsi) ?? 0, m.receivedAt));
    for (const [imsi, at] of last) seen.run(at, imsi);
    for (const [imsi, at, imei] of firstDeliveries) delivered.run(at, imsi, imei);
    return { ids, deleted: deletes.filter((id) => remove.run(id).changes === 1) };
  });
  return (req) => {
    const started = performance.now();
    // Fields named, not spread: a spread followed by a new field costs Node 20 a new hidden class each time.
    const { ids, deleted } = transaction(req);
    return { ids, deleted, seconds: (performance.now() - started) / 1000 };
  };
}

/** Where commits run. */
export interface CommitWriter {
  commit(req: CommitRequest): Promise<CommitResult>;
  /** Resolves once commits can run (the thread has booted). */
  ready(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Commits on a worker thread with its own connection to the database file: with synchronous=FULL a
 * commit waits for the disk, and the event loop that serves devices does not wait with it. WAL lets the
 * main connection read (peek) meanwhile.
 */
export function workerWriter(db: OpenOptions, observe: (seconds: number) => void = () => undefined): CommitWriter {
  // A writer that died takes its open commits with it (not acknowledged); the next commit starts another.
  const calls = new WorkerCalls<PostedCommit>(siblingModule(import.meta.url, 'outbox-writer'), { workerData: db, keepAlive: true });
  return {
    async commit(req) {
      const posted: PostedCommit = { ...req, inserts: req.inserts.map((m) => ({ ...m, payload: bytesToPost(m.payload) })) };
      const result = await calls.call<CommitResult>(posted);
      observe(result.seconds);
      return result;
    },
    ready: () => calls.ready(),
    close: () => calls.stop(),
  };
}
