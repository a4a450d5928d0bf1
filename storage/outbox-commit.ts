import type { Db, OpenOptions } from './db.ts';
import type { NewMessage } from './outbox.ts';
import { bytesToPost, WorkerCalls, siblingModule } from '../lib/worker-calls.ts';

/** One group commit: new rows, and rows delivered upstream to delete. */
export interface CommitRequest {
  inserts: NewMessage[];
  deletes: number[];
}

/** A commit as it travels to the writer thread: payloads as text (bytesToPost). */
export interface PostedCommit {
  inserts: Array<Omit<NewMessage, 'payload'> & { payload: string }>;
  deletes: number[];
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
  const transaction = db.transaction(({ inserts, deletes }: CommitRequest): Omit<CommitResult, 'seconds'> => {
    const ids = inserts.map((m) => Number(insert.run(m.imsi, m.deviceTopic, m.payload, m.qos, m.receivedAt, m.system ? 1 : 0, m.userProperties ?? null).lastInsertRowid));
    // The SIMs' last message time rides in the same transaction as their messages: no extra commit.
    const last = new Map<string, number>();
    for (const m of inserts) if (!m.system) last.set(m.imsi, Math.max(last.get(m.imsi) ?? 0, m.receivedAt));
    for (const [imsi, at] of last) seen.run(at, imsi);
    return { ids, deleted: deletes.filter((id) => remove.run(id).changes === 1) };
  });
  return (req) => {
    const started = performance.now();
    const result = transaction(req);
    return { ...result, seconds: (performance.now() - started) / 1000 };
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
      const posted: PostedCommit = { inserts: req.inserts.map((m) => ({ ...m, payload: bytesToPost(m.payload) })), deletes: req.deletes };
      const result = await calls.call<CommitResult>(posted);
      observe(result.seconds);
      return result;
    },
    ready: () => calls.ready(),
    close: () => calls.stop(),
  };
}
