// The stores of both dialects behind one fixture, so one test file holds each rule against SQLite and
// PostgreSQL alike (describe.each(storeDialects())). PostgreSQL is a throw-away server from Debian's
// binaries, one per test file, with a database of its own per test; without the binaries only SQLite
// runs, with the reason printed (unless SIMBRIDGE_REQUIRE_INTEROP=1).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import type { CredentialStore } from '../../storage/credentials.ts';
import { openDatabase, type Db } from '../../storage/db.ts';
import type { HeldMessage } from '../../storage/downlink.ts';
import { sqliteStores, type SharedStores } from '../../storage/index.ts';
import { NetworkSessions, type NetworkSessionStore } from '../../storage/network-sessions.ts';
import { Outbox, type OutboxMessage } from '../../storage/outbox.ts';
import { committer, type CommitRequest, type CommitResult, type CommitWriter } from '../../storage/outbox-commit.ts';
import { openPostgres, transaction, type Pool } from '../../storage/postgres/connect.ts';
import { postgresStores } from '../../storage/postgres/index.ts';
import { PgNetworkSessions } from '../../storage/postgres/network-sessions.ts';
import { commitOnPostgres, PgOutbox } from '../../storage/postgres/outbox.ts';
import { promised } from '../../storage/promised.ts';
import type { SimStore } from '../../storage/sims.ts';
import { findPostgres, PostgresServer } from './postgres.ts';

/** What a test reaches in either dialect. */
export interface StoreFixture {
  stores: SharedStores & {
    downlink: {
      hold(imsi: string, msg: Omit<HeldMessage, 'id'>, maxMessages: number, ttlMs: number): Promise<HeldMessage[]>;
      pending(imsi: string, now?: number): HeldMessage[] | Promise<HeldMessage[]>;
      remove(ids: number[]): Promise<void>;
      expire(now?: number): Promise<Array<HeldMessage & { imsi: string }>>;
    };
  };
  /** Runs SQL written with `?` placeholders (turned into $1, $2, … on PostgreSQL); resolves with its rows. */
  sql<T = Record<string, unknown>>(text: string, ...args: unknown[]): Promise<T[]>;
  /** The outbox's real commit transaction, run in this thread. */
  commit(req: CommitRequest): Promise<CommitResult>;
  markSeen(imsi: string, at: number): Promise<void>;
  /** The credential store as vending sees it. */
  credentials: CredentialStore;
  /** The network session table on this database with its own clock and replay window. */
  networkSessions(now: () => number, replayWindowMs?: number): NetworkSessionStore;
  /** An outbox on this database behind the given writer (a restart is a second one). */
  outbox(writer: CommitWriter, maxRows?: number, maxTailBytes?: number): Promise<OutboxUnderTest>;
}

/** The outbox surface both dialects share (reads and removals awaited). */
export type OutboxUnderTest = Pick<Outbox, 'enqueue' | 'onCommitted' | 'settle' | 'remove' | 'setDeleteDelay' | 'usage' | 'removals' | 'simsWithMessages'> & {
  peek(imsi: string, afterId: number, limit: number): Promise<OutboxMessage[]> | OutboxMessage[];
  deadLetter(msg: OutboxMessage, reason: string): void | Promise<void>;
  dropOldest(imsi: string, fits: () => boolean): OutboxMessage[] | Promise<OutboxMessage[]>;
};

export interface StoreDialect {
  name: 'sqlite' | 'postgres';
  fresh(): Promise<StoreFixture>;
}

const sqliteDialect = (): StoreDialect => {
  let open: Db[] = [];
  afterAll(() => {
    for (const db of open) db.close();
    open = [];
  });
  return {
    name: 'sqlite',
    async fresh() {
      const db = openDatabase({ file: join(mkdtempSync(join(tmpdir(), 'simbridge-stores-')), 's.db'), synchronous: 'normal' });
      open.push(db);
      const stores = sqliteStores(db);
      const commit = committer(db);
      return {
        stores,
        sql: async <T,>(text: string, ...args: unknown[]) => {
          const stmt = db.prepare(text);
          return (stmt.reader ? stmt.all(...args) : (stmt.run(...args), [])) as T[];
        },
        commit: async (req) => commit(req),
        markSeen: async (imsi, at) => (stores.simRouting as SimStore).markSeen(imsi, at),
        credentials: stores.credentials,
        networkSessions: (now, window) =>
          promised(new NetworkSessions(db, now, window), ['applyAll', 'expire', 'forgetOldStops', 'byImsi', 'count', 'list']),
        outbox: async (writer, maxRows, maxTailBytes) => new Outbox(db, writer, maxRows, maxTailBytes),
      };
    },
  };
};

const postgresDialect = (bin: string): StoreDialect => {
  let server: Promise<PostgresServer> | undefined;
  const pools: Pool[] = [];
  afterAll(async () => {
    await Promise.all(pools.splice(0).map((p) => p.end()));
    await (await server)?.close();
  });
  return {
    name: 'postgres',
    async fresh() {
      server ??= PostgresServer.start(bin);
      const pool = await openPostgres({ url: await (await server).database(), maxConnections: 4 });
      pools.push(pool);
      const stores = postgresStores(pool);
      return {
        stores,
        sql: async <T,>(text: string, ...args: unknown[]) => {
          let n = 0;
          return (await pool.query(text.replace(/\?/g, () => `$${++n}`), args)).rows as T[];
        },
        commit: async (req) => {
          const started = performance.now();
          const r = await transaction(pool, (c) => commitOnPostgres(c, req));
          return { ...r, seconds: (performance.now() - started) / 1000 };
        },
        markSeen: (imsi, at) => stores.sims.markSeen(imsi, at),
        credentials: stores.credentials,
        networkSessions: (now, window) => new PgNetworkSessions(pool, now, window),
        outbox: (writer, maxRows, maxTailBytes) => PgOutbox.open(pool, writer, maxRows, maxTailBytes),
      };
    },
  };
};

/** The dialects to run store tests against: SQLite always, PostgreSQL when its binaries are installed. */
export function storeDialects(): StoreDialect[] {
  const bin = findPostgres();
  return bin ? [sqliteDialect(), postgresDialect(bin)] : [sqliteDialect()];
}
