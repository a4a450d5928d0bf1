// The outbox's writer thread (storage/outbox-commit.ts#workerWriter): runs each commit it is sent on a
// connection of its own and answers with the row ids.
import { workerData } from 'node:worker_threads';
import { openDatabase, type OpenOptions } from './db.ts';
import { committer, type PostedCommit } from './outbox-commit.ts';
import { postedBytes, serveCalls } from '../lib/worker-calls.ts';

const commit = committer(openDatabase(workerData as OpenOptions));

serveCalls<PostedCommit>((req) => commit({ ...req, inserts: req.inserts.map((m) => ({ ...m, payload: postedBytes(m.payload) })) }));
