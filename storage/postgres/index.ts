import type { AuditStore } from '../audit.ts';
import type { SharedStores } from '../index.ts';
import type { MetaStore } from '../meta.ts';
import type { OutboxStats } from '../outbox-stats.ts';
import type { RetentionStore } from '../retention.ts';
import type { AdminTokenStore } from '../tokens.ts';
import { PgAuditLog } from './audit.ts';
import type { Pool } from './connect.ts';
import { PgCredentialStore } from './credentials.ts';
import { PgDownlinkStore } from './downlink.ts';
import { PgGatewayCredentials } from './gateway-credentials.ts';
import { PgMetaStore } from './meta.ts';
import { PgMqttSessionStore } from './mqtt-sessions.ts';
import { PgNetworkSessions } from './network-sessions.ts';
import { PgOutboxStats } from './outbox-stats.ts';
import { PgRetentionStore } from './retention.ts';
import { PgSimStore } from './sims.ts';
import { PgTokenStore } from './tokens.ts';

/**
 * Every store over one PostgreSQL pool. What admin, the RADIUS listener and the CLI use has the same
 * promise-shaped interfaces as on SQLite (SharedStores), vending's credential store included. Three
 * differ, because their SQLite stores are still read synchronously on the per-message path: the SIM
 * routing cache, the session lookup by IP, and held downlink's pending() (here they answer with promises).
 */
export interface PostgresStores extends SharedStores {
  sims: PgSimStore;
  credentials: PgCredentialStore;
  downlink: PgDownlinkStore;
  networkSessions: PgNetworkSessions;
}

export function postgresStores(pool: Pool, now: () => number = Date.now, opts: { replayWindowMs?: number } = {}): PostgresStores {
  const credentials = new PgCredentialStore(pool, now);
  return {
    sims: new PgSimStore(pool),
    audit: new PgAuditLog(pool) satisfies AuditStore,
    credentials,
    credentialReads: credentials,
    gatewayCredentials: new PgGatewayCredentials(pool, now),
    downlink: new PgDownlinkStore(pool),
    mqttSessions: new PgMqttSessionStore(pool),
    networkSessions: new PgNetworkSessions(pool, now, opts.replayWindowMs),
    outboxStats: new PgOutboxStats(pool) satisfies OutboxStats,
    retention: new PgRetentionStore(pool) satisfies RetentionStore,
    tokens: new PgTokenStore(pool) satisfies AdminTokenStore,
    meta: new PgMetaStore(pool) satisfies MetaStore,
  };
}
