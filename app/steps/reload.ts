import type { Logger } from 'pino';
import type { BatchSchedules } from '../../bridge/batching/schedules.ts';
import type { Dispatcher } from '../../bridge/dispatcher.ts';
import type { Config } from '../../config/schema.ts';
import type { Stores } from '../../storage/index.ts';
import { KeyCipher } from '../../vending/key-cipher.ts';
import { checkMasterKey } from '../../vending/master-key.ts';
import { groupPolicy } from '../../vending/policy.ts';
import { changedGroups } from '../../vending/policy-sync.ts';
import type { Live } from './live.ts';
import { masterKeys } from './storage.ts';

/** Sections bound at start (sockets, files, sessions): a reload reports them instead of applying them. */
const restartOnlyKeys = ['mode', 'dataDir', 'listeners', 'identity', 'radius', 'storage', 'vending', 'upstream', 'admin', 'sandbox', 'limits', 'files', 'events'] as const;

interface ReloadDeps {
  stores: Stores;
  cipher: KeyCipher;
  schedules: BatchSchedules;
  dispatcher: Dispatcher;
  /** Brings these groups' policies in IoT Core up to date (vending/policy-sync.ts). */
  syncPolicies(groups: string[]): Promise<unknown>;
  env: NodeJS.ProcessEnv;
  log: Logger;
}

/**
 * Applies a new configuration: groups (batching, topics, lock, overflow, downlink), SIM defaults and
 * outbox quotas take effect for what comes next; returns the changed keys that need a restart.
 */
export function reloader(live: Live, deps: ReloadDeps): (next: Config) => string[] {
  return (next) => {
    const config = live.config;
    // Outbox quotas are read per message and apply live; the rest of `storage` is bound to the open database.
    const comparable = (c: Config) => ({ ...c, storage: { ...c.storage, outbox: undefined } });
    // A new key ring (a master-key rotation) applies once it opens this database's keys.
    if (JSON.stringify(next.security) !== JSON.stringify(config.security)) void reloadKeys(next, deps);
    const needRestart = restartOnlyKeys.filter((k) => JSON.stringify(comparable(next)[k]) !== JSON.stringify(comparable(config)[k]));
    const kept = Object.fromEntries(restartOnlyKeys.map((k) => [k, config[k]]));
    live.config = { ...next, ...kept, storage: { ...config.storage, outbox: next.storage.outbox } } as Config;
    deps.schedules.apply(live.config.groups);
    void deps.syncPolicies(changedGroups(Object.keys(live.config.groups), (g) => groupPolicy(config, g), (g) => groupPolicy(live.config, g)));
    // New thresholds may make open batches due now.
    deps.dispatcher.start();
    return needRestart;
  };
}

/** The running keys stay unless the new ones open every key this database holds. */
async function reloadKeys(next: Config, deps: ReloadDeps): Promise<void> {
  try {
    const keys = masterKeys(next, deps.env);
    await checkMasterKey(deps.stores, new KeyCipher(...keys));
    deps.cipher.setKeys(...keys);
    deps.log.info({ previousKeys: keys[1].length }, 'master keys reloaded');
  } catch (err) {
    deps.log.error({ err: (err as Error).message }, 'new master keys refused; the running ones stay');
  }
}
