import type { Logger } from 'pino';
import type { Config } from '../config/schema.ts';
import type { Metrics } from '../bridge/metrics.ts';
import type { Db } from '../storage/db.ts';
import { startAdminApi } from './steps/admin.ts';
import { clusterView, followCluster } from './steps/cluster.ts';
import { buildDelivery, startBatchSchedules } from './steps/delivery.ts';
import { startEvents } from './steps/events.ts';
import { startIngress } from './steps/ingress.ts';
import type { Live } from './steps/live.ts';
import { reloader } from './steps/reload.ts';
import { shutdown } from './steps/shutdown.ts';
import { openGatewayStorage, type GatewayStorage } from './steps/storage.ts';
import { checkControlPlane, startUpstream } from './steps/upstream.ts';
import { startVending } from './steps/vending.ts';

export interface Gateway {
  mqttPort: number;
  httpPort: number;
  coapPort?: number;
  udpPort?: number;
  radiusPort?: number;
  adminPort?: number;
  /** Set when IoT Core could not be reached at start: the banner says so. */
  upstreamWarning?: string;
  /** The SQLite database; absent when the state is on PostgreSQL (storage.url). */
  db?: Db;
  metrics: Metrics;
  /**
   * Applies a new configuration: groups (batching, topics, lock, overflow, downlink), SIM defaults and
   * outbox quotas take effect for what comes next; returns the changed keys that need a restart.
   */
  reload(next: Config): string[];
  /** Stops accepting, sends open batches (bounded), finishes in-flight commits, closes sessions and the database. */
  close(): Promise<void>;
}

export async function startGateway(config: Config, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<Gateway> {
  const storage = await openGatewayStorage(config, env, log);
  try {
    return await assemble({ config }, storage, log, env);
  } catch (err) {
    await storage.close();
    throw err;
  }
}

/** The composition root, one step a line; each step's module says what it builds and why. */
async function assemble(live: Live, storage: GatewayStorage, log: Logger, env: NodeJS.ProcessEnv): Promise<Gateway> {
  const { stores, cipher, outbox, writer, metrics, db } = storage;
  const vending = startVending(live, { stores, cipher, metrics, log });
  const upstream = startUpstream(live, { vending, metrics, log });
  const delivery = buildDelivery(live, { stores, outbox, vending, upstream, metrics, log });
  const events = startEvents(live, { db, postgres: storage.postgres, stores, cipher, vending, upstream, metrics, log });
  // Devices are let in once the worker threads have booted: a first wave of devices would otherwise
  // wait for the writer thread to load, and share the cores with both threads' start-up.
  await Promise.all([writer.ready(), upstream.pool.ready()]);
  const ingress = await startIngress(live, { stores, delivery, metrics, log });
  if (storage.postgres) followCluster(live, storage.postgres, { delivery, upstream, ingress, log });
  delivery.dispatcher.start();
  const controlPlane = await checkControlPlane(live, upstream, vending);
  // A topic template changed while the gateway was down reaches devices vended before, not only new ones.
  void vending.vendor.syncPolicies(Object.keys(live.config.groups));
  const schedules = startBatchSchedules(live, delivery.dispatcher);
  const admin = await startAdminApi(live, { databaseUp: storage.databaseUp, cluster: clusterView(live, storage, upstream), stores, metrics, vending, upstream, ingress, log });

  return {
    mqttPort: ingress.mqtt.port,
    httpPort: ingress.http.port,
    coapPort: ingress.lowpower.coap?.port,
    udpPort: ingress.lowpower.udp?.port,
    radiusPort: ingress.radius?.port,
    adminPort: admin?.port,
    upstreamWarning: controlPlane.warning,
    db,
    metrics,
    reload: reloader(live, { stores, cipher, schedules, dispatcher: delivery.dispatcher, syncPolicies: (groups) => vending.vendor.syncPolicies(groups), env, log }),
    close: shutdown(live, { closeDatabase: storage.close, outbox, vending, upstream, delivery, ingress, schedules, admin, controlPlane, events }),
  };
}
