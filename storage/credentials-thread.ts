// The credentials table's thread (storage/store-thread.ts): vending's steps commit here, on a connection
// of their own, instead of on the event loop that serves devices.
import { workerData } from 'node:worker_threads';
import { serveCalls } from '../lib/worker-calls.ts';
import { SqliteCredentialStore } from './credentials.ts';
import { openDatabase, type OpenOptions } from './db.ts';
import { serveStore } from './store-thread.ts';

serveStore(new SqliteCredentialStore(openDatabase(workerData as OpenOptions)), serveCalls);
