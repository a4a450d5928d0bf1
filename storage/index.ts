import { AuditLog, type AuditStore } from './audit.ts';
import { CREDENTIAL_STORE_METHODS, SqliteCredentialStore, type CredentialReads, type CredentialStore } from './credentials.ts';
import type { Db } from './db.ts';
import { DownlinkStore, type HeldDownlinkStore } from './downlink.ts';
import { SqliteGatewayCredentials, type GatewayCredentialStore } from './gateway-credentials.ts';
import { SqliteMetaStore, type MetaStore } from './meta.ts';
import { SqliteMqttSessions, type MqttSessionStore } from './mqtt-sessions.ts';
import { NetworkSessions, type NetworkSessionStore, type SessionLookup } from './network-sessions.ts';
import { SqliteOutboxStats, type OutboxStats } from './outbox-stats.ts';
import { promised } from './promised.ts';
import { SqliteRetentionStore, type RetentionStore } from './retention.ts';
import { SIM_REGISTRY_METHODS, SimStore, type SimRegistry, type SimRoutingStore } from './sims.ts';
import type { DeliveryOutbox, GroupCommitOutbox, MaybePromise, OutboxMessage } from './outbox.ts';
import { TokenStore, type AdminTokenStore } from './tokens.ts';

/**
 * Every store over one database, built once by the composition root and handed to whoever needs one:
 * one SimStore (and so one routing cache) per process. Callers see the promise-shaped interfaces, so
 * a PostgreSQL implementation can stand beside the SQLite one; the outbox is built beside them, as it
 * needs its writer thread.
 */
export interface Stores {
  sims: SimRegistry;
  /**
   * The same registry, synchronous, for the per-message path: its routing cache, and the delivery loop
   * (bridge/dispatcher.ts) until that reads through the cache alone.
   */
  simRouting: SimRoutingStore;
  audit: AuditStore;
  /** Certificate generations; a vending step and its audit row are one call (one commit). */
  credentials: CredentialStore;
  /** The same table as the admin surface reads it. */
  credentialReads: CredentialReads;
  /** The gateway's own certificate (lifecycle events), apart from the SIMs'. */
  gatewayCredentials: GatewayCredentialStore;
  downlink: HeldDownlinkStore;
  /** Persistent MQTT sessions and the commands kept for them. */
  mqttSessions: MqttSessionStore;
  networkSessions: NetworkSessionStore;
  /** The same table, synchronous, for identifying devices by their address. */
  sessionLookup: SessionLookup;
  outboxStats: OutboxStats;
  retention: RetentionStore;
  tokens: AdminTokenStore;
  meta: MetaStore;
}

/**
 * The outbox as the gateway uses it, either dialect: the group commit, the delivery side, and dropping a
 * device's oldest rows (at once on SQLite, over the network on PostgreSQL).
 */
export type GatewayOutbox = DeliveryOutbox &
  Pick<GroupCommitOutbox, 'enqueue' | 'settle' | 'close' | 'quotaUsage' | 'quotaReady'> & {
    dropOldest(imsi: string, fits: () => boolean): MaybePromise<OutboxMessage[]>;
  };

/**
 * The stores both dialects offer with the same promise-shaped interfaces (storage/postgres/index.ts
 * builds them over PostgreSQL).
 */
export type SharedStores = Pick<Stores, 'sims' | 'audit' | 'credentials' | 'credentialReads' | 'gatewayCredentials' | 'mqttSessions' | 'networkSessions' | 'outboxStats' | 'retention' | 'tokens' | 'meta'>;

/** The SQLite stores over an open database; replayWindowMs: how long stopped RADIUS sessions are remembered. */
export function sqliteStores(db: Db, now: () => number = Date.now, opts: { replayWindowMs?: number } = {}): Stores {
  const sims = new SimStore(db);
  const networkSessions = new NetworkSessions(db, now, opts.replayWindowMs);
  const credentials = promised(new SqliteCredentialStore(db, now), CREDENTIAL_STORE_METHODS) satisfies CredentialStore;
  return {
    sims: promised(sims, SIM_REGISTRY_METHODS) satisfies SimRegistry,
    simRouting: sims,
    audit: promised(new AuditLog(db), ['record', 'query']) satisfies AuditStore,
    credentials,
    credentialReads: credentials satisfies CredentialReads,
    gatewayCredentials: new SqliteGatewayCredentials(db, now),
    downlink: downlinkView(new DownlinkStore(db)),
    mqttSessions: promised(new SqliteMqttSessions(db), ['load', 'save', 'list', 'remove', 'keep', 'pending', 'delivered', 'settle', 'expire']) satisfies MqttSessionStore,
    networkSessions: promised(networkSessions, ['applyAll', 'expire', 'forgetOldStops', 'byImsi', 'count', 'list']) satisfies NetworkSessionStore,
    sessionLookup: networkSessions,
    outboxStats: promised(new SqliteOutboxStats(db), ['summary', 'ofSim', 'deadLetters']) satisfies OutboxStats,
    retention: promised(new SqliteRetentionStore(db), ['purgeBefore']) satisfies RetentionStore,
    tokens: promised(new TokenStore(db), ['create', 'verify', 'list', 'revoke']) satisfies AdminTokenStore,
    meta: promised(new SqliteMetaStore(db), ['get', 'putIfAbsent', 'put']) satisfies MetaStore,
  };
}

function downlinkView(store: DownlinkStore): HeldDownlinkStore {
  return { ...promised(store, ['hold', 'remove', 'expire']), pending: (imsi, now) => store.pending(imsi, now) } satisfies HeldDownlinkStore;
}
