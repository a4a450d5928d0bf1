import { join } from 'node:path';
import type { Config } from '../../config/schema.ts';
import { createMetrics, type Metrics } from '../../bridge/metrics.ts';
import { replayWindow } from '../../bridge/radius/listener.ts';
import { openDatabase, type Db } from '../../storage/db.ts';
import { assertPrivateDirectory } from '../../storage/files.ts';
import { sqliteStores, type Stores } from '../../storage/index.ts';
import { Outbox } from '../../storage/outbox.ts';
import { workerWriter, type CommitWriter } from '../../storage/outbox-commit.ts';
import { KeyCipher } from '../../vending/key-cipher.ts';
import { checkMasterKey, loadMasterKey, loadPreviousMasterKeys } from '../../vending/master-key.ts';

/** Opens the gateway's database; outside the sandbox its directory must be private. */
export function openGatewayDatabase(config: Config): Db {
  // The data directory holds real payloads and identifiers.
  if (config.mode !== 'sandbox') assertPrivateDirectory(config.dataDir);
  return openDatabase({ file: join(config.dataDir, 'simbridge.db'), synchronous: config.storage.synchronous, cacheMb: config.storage.cacheMb });
}

/** The current master key and, during a rotation, the previous ones. */
export function masterKeys(config: Config, env: NodeJS.ProcessEnv): [Buffer, Buffer[]] {
  const current = loadMasterKey({ env, file: config.security.masterKeyFile, generateAt: config.mode === 'sandbox' ? join(config.dataDir, 'master.key') : undefined });
  return [current, loadPreviousMasterKeys({ env, files: config.security.previousMasterKeyFiles })];
}

/**
 * Every store over the database and the key cipher, refused when the master keys do not open the keys
 * this database holds. The routing cache is filled here: the per-message path reads SIMs from memory.
 */
export async function openStores(config: Config, db: Db, env: NodeJS.ProcessEnv): Promise<{ stores: Stores; cipher: KeyCipher }> {
  const cipher = new KeyCipher(...masterKeys(config, env));
  const stores = sqliteStores(db, Date.now, { replayWindowMs: replayWindow(config.radius.sessionTimeoutMs) });
  await checkMasterKey(stores, cipher);
  stores.simRouting.warmRoutingCache();
  return { stores, cipher };
}

/** The outbox, its writer thread, and the metrics (which count the outbox by group). */
export function openOutbox(config: Config, db: Db): { outbox: Outbox; writer: CommitWriter; metrics: Metrics } {
  const metrics = createMetrics(() => outbox.byGroup());
  const writer = workerWriter({ file: db.name, synchronous: config.storage.synchronous, cacheMb: config.storage.cacheMb }, (s) => metrics.outboxCommitSeconds.observe(s));
  const outbox = new Outbox(db, writer, config.storage.commitMaxRows, config.storage.deliveryCacheMb * 1024 * 1024);
  return { outbox, writer, metrics };
}
