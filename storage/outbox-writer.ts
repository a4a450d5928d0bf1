// The outbox's writer thread (storage/outbox-commit.ts#workerWriter): runs each commit it is sent on a
// connection of its own and answers with the row ids.
import { workerData } from 'node:worker_threads';
import { openDatabase, type OpenOptions } from './db.ts';
import { committer, type CommitRequest } from './outbox-commit.ts';
import { asBuffer, serveCalls } from '../lib/worker-calls.ts';

const commit = committer(openDatabase(workerData as OpenOptions));

serveCalls<CommitRequest>((req) => {
  // SQLite binds Buffers as blobs.
  for (const m of req.inserts) m.payload = asBuffer(m.payload);
  return commit(req);
});
