import type { Stores } from '../index.ts';
import type { CommitWriter } from '../outbox-commit.ts';
import { ChangeFeed } from './changes.ts';
import { ClusterNode, type ClusterOptions } from './cluster.ts';
import type { Pool } from './connect.ts';
import { PgDownlinkCache } from './downlink-cache.ts';
import { PgEventStream } from './events.ts';
import type { PostgresStores } from './index.ts';
import { PgOutbox, postgresWriter } from './outbox.ts';
import { PgSimRouting } from './routing.ts';
import { PgSessionCache } from './session-cache.ts';

export interface PostgresGatewayParts {
  /** Every store the gateway uses, the per-message reads answered from this node's caches. */
  stores: Stores;
  outbox: PgOutbox;
  writer: CommitWriter;
  /** The connection that hears other nodes' changes; `connected` is the database's readiness. */
  feed: ChangeFeed;
  sessions: PgSessionCache;
  /** This node among the others: heartbeat and the SIMs it holds. */
  cluster: ClusterNode;
  routing: PgSimRouting;
  /** The gateway's lifecycle events: recorded by every node, published by the one holding their lease. */
  events: PgEventStream;
  close(): Promise<void>;
}

/**
 * The gateway's stores over PostgreSQL: the shared stores, plus node-local caches for what the
 * per-message path reads synchronously (SIM routing, the session lookup by IP, held downlink), all kept
 * fresh by one change feed. The feed listens before the caches load, so no change between the two is missed.
 */
export async function postgresGatewayParts(
  pool: Pool,
  shared: PostgresStores,
  opts: {
    url: string;
    commitMaxRows: number;
    deliveryCacheBytes: number;
    cluster: ClusterOptions;
    observeCommit(seconds: number): void;
    onError(err: unknown): void;
  },
): Promise<PostgresGatewayParts> {
  const feed = new ChangeFeed(opts.url);
  await feed.start();
  try {
    const routing = new PgSimRouting(pool, shared.sims, feed, opts.onError);
    const sessions = new PgSessionCache(pool, shared.networkSessions, feed, opts.onError);
    const downlink = new PgDownlinkCache(pool, shared.downlink, feed, opts.onError);
    await Promise.all([routing.load(), sessions.load(), downlink.load()]);
    const writer = postgresWriter(pool, opts.observeCommit, () => outbox.fence());
    const outbox = await PgOutbox.open(pool, writer, opts.commitMaxRows, opts.deliveryCacheBytes, { cluster: true });
    // The node joins before devices are let in: its SIMs (and unheld ones with waiting rows) are counted first.
    const cluster = new ClusterNode(pool, opts.cluster, opts.onError);
    outbox.joinCluster(cluster, feed, opts.onError);
    cluster.listen(feed);
    await cluster.join();
    const stores: Stores = {
      ...shared,
      sims: routing.registry,
      simRouting: routing,
      downlink,
      networkSessions: sessions.store,
      sessionLookup: sessions,
    };
    return {
      stores,
      outbox,
      writer,
      feed,
      sessions,
      cluster,
      routing,
      events: new PgEventStream(pool, cluster, feed),
      close: async () => {
        await cluster.leave().catch(opts.onError);
        await feed.close();
      },
    };
  } catch (err) {
    await feed.close();
    throw err;
  }
}
