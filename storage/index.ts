import { AuditLog } from './audit.ts';
import { CredentialStore } from './credentials.ts';
import type { Db } from './db.ts';
import { DownlinkStore } from './downlink.ts';
import { MetaStore } from './meta.ts';
import { NetworkSessions } from './network-sessions.ts';
import { OutboxStats } from './outbox-stats.ts';
import { RetentionStore } from './retention.ts';
import { SimStore } from './sims.ts';
import { TokenStore } from './tokens.ts';

/**
 * Every store over one database, built once by the composition root and handed to whoever needs one:
 * one SimStore (and so one routing cache) per process. The outbox is built beside them, as it needs
 * its writer thread.
 */
export interface Stores {
  sims: SimStore;
  audit: AuditLog;
  credentials: CredentialStore;
  downlink: DownlinkStore;
  networkSessions: NetworkSessions;
  outboxStats: OutboxStats;
  retention: RetentionStore;
  tokens: TokenStore;
  meta: MetaStore;
}

/** The SQLite stores over an open database; replayWindowMs: how long stopped RADIUS sessions are remembered. */
export function sqliteStores(db: Db, now: () => number = Date.now, opts: { replayWindowMs?: number } = {}): Stores {
  return {
    sims: new SimStore(db),
    audit: new AuditLog(db),
    credentials: new CredentialStore(db, now),
    downlink: new DownlinkStore(db),
    networkSessions: new NetworkSessions(db, now, opts.replayWindowMs),
    outboxStats: new OutboxStats(db),
    retention: new RetentionStore(db),
    tokens: new TokenStore(db),
    meta: new MetaStore(db),
  };
}
