import { AuditLog, type AuditStore } from './audit.ts';
import { CredentialStore } from './credentials.ts';
import type { Db } from './db.ts';
import { DownlinkStore } from './downlink.ts';
import { SqliteMetaStore, type MetaStore } from './meta.ts';
import { NetworkSessions } from './network-sessions.ts';
import { SqliteOutboxStats, type OutboxStats } from './outbox-stats.ts';
import { promised } from './promised.ts';
import { SqliteRetentionStore, type RetentionStore } from './retention.ts';
import { SimStore } from './sims.ts';
import { TokenStore, type AdminTokenStore } from './tokens.ts';

/**
 * Every store over one database, built once by the composition root and handed to whoever needs one:
 * one SimStore (and so one routing cache) per process. Callers see the promise-shaped interfaces, so
 * a PostgreSQL implementation can stand beside the SQLite one; the outbox is built beside them, as it
 * needs its writer thread.
 */
export interface Stores {
  sims: SimStore;
  audit: AuditStore;
  credentials: CredentialStore;
  downlink: DownlinkStore;
  networkSessions: NetworkSessions;
  outboxStats: OutboxStats;
  retention: RetentionStore;
  tokens: AdminTokenStore;
  meta: MetaStore;
}

/** The SQLite stores over an open database. */
export function sqliteStores(db: Db, now: () => number = Date.now): Stores {
  return {
    sims: new SimStore(db),
    audit: promised(new AuditLog(db), ['record', 'query']) satisfies AuditStore,
    credentials: new CredentialStore(db, now),
    downlink: new DownlinkStore(db),
    networkSessions: new NetworkSessions(db, now),
    outboxStats: promised(new SqliteOutboxStats(db), ['summary', 'ofSim', 'deadLetters']) satisfies OutboxStats,
    retention: promised(new SqliteRetentionStore(db), ['purgeBefore']) satisfies RetentionStore,
    tokens: promised(new TokenStore(db), ['create', 'verify', 'list', 'revoke']) satisfies AdminTokenStore,
    meta: promised(new SqliteMetaStore(db), ['get', 'putIfAbsent']) satisfies MetaStore,
  };
}
