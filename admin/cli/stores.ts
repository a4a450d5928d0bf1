import type { Config } from '../../config/schema.ts';
import { openStores, type OpenedStores } from '../../storage/open.ts';

/**
 * The gateway's database as its config names it (SQLite in the data directory, or PostgreSQL at
 * storage.url), for a one-off command: a single connection unless the command works concurrently.
 */
export function openConfiguredStores(config: Config, maxConnections = 1): Promise<OpenedStores> {
  return openStores({
    dataDir: config.dataDir,
    url: config.storage.url,
    synchronous: config.storage.synchronous,
    connectTimeoutMs: config.storage.connectTimeoutMs,
    maxConnections,
  });
}
