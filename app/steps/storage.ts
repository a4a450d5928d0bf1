import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../../config/schema.ts';
import { createMetrics, type Metrics } from '../../bridge/metrics.ts';
import { replayWindow } from '../../bridge/radius/listener.ts';
import { credentialsOnThread } from '../../storage/credentials.ts';
import type { Db } from '../../storage/db.ts';
import { assertPrivateDirectory, prepareDataDirectory } from '../../storage/files.ts';
import type { GatewayOutbox, Stores } from '../../storage/index.ts';
import { openStores as openDatabaseStores } from '../../storage/open.ts';
import { Outbox } from '../../storage/outbox.ts';
import { workerWriter, type CommitWriter } from '../../storage/outbox-commit.ts';
import type { PostgresGatewayParts } from '../../storage/postgres/gateway.ts';
import { KeyCipher } from '../../vending/key-cipher.ts';
import { checkMasterKey, loadMasterKey, loadPreviousMasterKeys } from '../../vending/master-key.ts';

/** The gateway's state, whichever database holds it. */
export interface GatewayStorage {
  stores: Stores;
  cipher: KeyCipher;
  outbox: GatewayOutbox;
  /** Ready once its worker thread (SQLite) has booted. */
  writer: CommitWriter;
  /** The metrics (which count the outbox by group). */
  metrics: Metrics;
  /** The SQLite database; absent on PostgreSQL. */
  db?: Db;
  /** PostgreSQL only: the change feed and caches shared by the nodes. */
  postgres?: PostgresGatewayParts;
  /** The database can be reached now (readiness). */
  databaseUp(): boolean;
  /** Closes the database (after the outbox closed). */
  close(): Promise<void>;
}

/** The current master key and, during a rotation, the previous ones. */
export function masterKeys(config: Config, env: NodeJS.ProcessEnv): [Buffer, Buffer[]] {
  const current = loadMasterKey({ env, file: config.security.masterKeyFile, generateAt: config.mode === 'sandbox' ? join(config.dataDir, 'master.key') : undefined });
  return [current, loadPreviousMasterKeys({ env, files: config.security.previousMasterKeyFiles })];
}

/**
 * Opens the database `storage` names (SQLite in the data directory, or PostgreSQL at storage.url) with every
 * store, the outbox and the key cipher; refused when the master keys do not open the keys the database
 * holds. The per-message path reads SIMs from memory: the routing cache is filled here.
 */
export async function openGatewayStorage(config: Config, env: NodeJS.ProcessEnv, log: Logger): Promise<GatewayStorage> {
  // The data directory holds real payloads and identifiers (and, on PostgreSQL, the master key may live there).
  if (config.mode !== 'sandbox') assertPrivateDirectory(config.dataDir);
  const { storage } = config;
  // On PostgreSQL too: files for devices (and in sandbox mode the master key) are written there.
  if (storage.url) prepareDataDirectory(config.dataDir, 'files for devices are kept there');
  const opened = await openDatabaseStores({
    dataDir: config.dataDir,
    url: storage.url,
    synchronous: storage.synchronous,
    cacheMb: storage.cacheMb,
    maxConnections: storage.maxConnections,
    connectTimeoutMs: storage.connectTimeoutMs,
    replayWindowMs: replayWindow(config.radius.sessionTimeoutMs),
  });
  try {
    const cipher = new KeyCipher(...masterKeys(config, env));
    if (opened.dialect === 'sqlite') {
      const { db, stores } = opened;
      await checkMasterKey(stores, cipher);
      stores.simRouting.warmRoutingCache();
      const metrics = createMetrics(() => outbox.byGroup());
      const writer = workerWriter({ file: db.name, synchronous: storage.synchronous, cacheMb: storage.cacheMb }, (s) => metrics.outboxCommitSeconds.observe(s));
      const outbox = new Outbox(db, writer, storage.commitMaxRows, storage.deliveryCacheMb * 1024 * 1024);
      outbox.setDeleteDelay(storage.deleteDelayMs);
      stores.simRouting.writeDeliveredWith?.((imsi, at, imei) => outbox.noteFirstDelivery(imsi, at, imei));
      // Vending commits a few times per SIM: on a thread of its own, not on the event loop that serves devices.
      const credentials = credentialsOnThread({ file: db.name, synchronous: storage.synchronous }, stores.credentials);
      const threaded: Stores = { ...stores, credentials, credentialReads: credentials };
      const close = async () => (await credentials.stop(), await opened.close());
      return { stores: threaded, cipher, outbox, writer, metrics, db, databaseUp: () => db.open, close };
    }
    const { postgresGatewayParts } = await import('../../storage/postgres/gateway.ts');
    // Scrapes read the last figures and start the next read: the count is a query over the network.
    let groups: ReturnType<PostgresGatewayParts['outbox']['byGroup']> extends Promise<infer G> ? G : never = [];
    let reading = false;
    const metrics = createMetrics(() => {
      if (!reading) {
        reading = true;
        parts.outbox.byGroup().then((g) => (groups = g), () => undefined).finally(() => (reading = false));
      }
      return groups;
    });
    // Several nodes scrape into one place: each node's figures carry its name.
    metrics.registry.setDefaultLabels({ node: nodeId(config) });
    const parts = await postgresGatewayParts(opened.pool, opened.stores, {
      url: storage.url!,
      commitMaxRows: storage.commitMaxRows,
      deliveryCacheBytes: storage.deliveryCacheMb * 1024 * 1024,
      cluster: { ...config.cluster, nodeId: nodeId(config), info: { host: hostname(), pid: process.pid } },
      observeCommit: (s) => metrics.outboxCommitSeconds.observe(s),
      onError: (err) => log.warn({ err: String(err) }, 'PostgreSQL: background work failed (cache refresh, heartbeat, lease)'),
    });
    const stores = parts.stores;
    await checkMasterKey(stores, cipher).catch(async (err) => {
      await parts.close();
      throw err;
    });
    return {
      stores,
      cipher,
      outbox: parts.outbox,
      writer: parts.writer,
      metrics,
      postgres: parts,
      databaseUp: () => parts.feed.connected,
      close: async () => {
        await parts.close();
        await opened.close();
      },
    };
  } catch (err) {
    await opened.close();
    throw err;
  }
}

/** This node's name among the nodes on one database: configured, else the host name and MQTT port. */
export function nodeId(config: Config): string {
  // Port 0 (chosen by the system) names no node: the process id stands in.
  return config.cluster.nodeId ?? `${hostname()}:${config.listeners.mqtt.port || `pid${process.pid}`}`;
}
