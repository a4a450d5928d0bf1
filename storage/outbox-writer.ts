// The outbox's writer thread (storage/outbox-commit.ts#workerWriter): runs each commit it is sent on a
// connection of its own and answers with the row ids.
import { parentPort, workerData } from 'node:worker_threads';
import { openDatabase, type OpenOptions } from './db.ts';
import { committer, type CommitRequest } from './outbox-commit.ts';

const commit = committer(openDatabase(workerData as OpenOptions));

parentPort!.on('message', ({ seq, req }: { seq: number; req: CommitRequest }) => {
  // Buffers arrive as plain Uint8Arrays; SQLite binds Buffers as blobs.
  for (const m of req.inserts) m.payload = Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
  try {
    parentPort!.postMessage({ seq, result: commit(req) });
  } catch (err) {
    parentPort!.postMessage({ seq, error: String((err as Error)?.message ?? err) });
  }
});
