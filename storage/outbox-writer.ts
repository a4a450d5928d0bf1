// The outbox's writer thread (storage/outbox-commit.ts#workerWriter): runs each commit it is sent on a
// connection of its own and answers with the row ids.
import { workerData } from 'node:worker_threads';
import { openDatabase, type OpenOptions } from './db.ts';
import { committer, type CommitRequest } from './outbox-commit.ts';
import { serveCalls } from './ts-worker.ts';

const commit = committer(openDatabase(workerData as OpenOptions));

serveCalls<CommitRequest>((req) => {
  // Buffers arrive as plain Uint8Arrays; SQLite binds Buffers as blobs.
  for (const m of req.inserts) m.payload = Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
  return commit(req);
});
