import type { Logger } from 'pino';
import { HeldElsewhereError } from '../../bridge/upstream/session-pool.ts';
import type { ClusterView } from '../../admin/types.ts';
import type { GatewayStorage } from './storage.ts';
import { nodeId } from './storage.ts';
import type { PostgresGatewayParts } from '../../storage/postgres/gateway.ts';
import type { DeliveryParts } from './delivery.ts';
import type { IngressParts } from './ingress.ts';
import type { Live } from './live.ts';
import type { UpstreamParts } from './upstream.ts';

/**
 * Several nodes on one PostgreSQL database: SIMs this node gains are delivered from here, SIMs it loses
 * give up their upstream session (IoT Core allows one connection per thing), and a network session another
 * node's RADIUS accounting ended lets go of the device connected here.
 */
export function followCluster(live: Live, parts: PostgresGatewayParts, deps: { delivery: DeliveryParts; upstream: UpstreamParts; ingress: IngressParts; log: Logger }): void {
  const { dispatcher } = deps.delivery;
  const { stores, cluster } = parts;
  const log = deps.log.child({ component: 'cluster', node: cluster.nodeId });
  parts.outbox.onWake((imsi) => dispatcher.wake(imsi));
  cluster.describe = () => ({ ...cluster.opts.info, upstreamSessions: deps.upstream.pool.size });
  // Persistent MQTT sessions live with their SIM: its holder subscribes them upstream (commands are kept
  // for a sleeping device), whichever node the device last talked to.
  const { mqtt } = deps.ingress;
  const takeUp = (imsis: string[]) => {
    mqtt.takeUp(imsis).then(
      (n) => n && log.info({ sessions: n }, 'persistent MQTT sessions of SIMs held here taken up'),
      (err: unknown) => log.error({ err: String(err) }, 'persistent MQTT sessions not taken up'),
    );
  };
  cluster.onHeld(takeUp);
  takeUp(cluster.heldSims());
  cluster.onLost((imsis) => {
    log.warn({ sims: imsis.length }, 'SIMs now held by another node; their upstream sessions close here');
    mqtt.release(imsis);
    for (const imsi of imsis) {
      const sim = stores.simRouting.forRouting(imsi);
      if (!sim) continue;
      void deps.upstream.pool.drop(sim.thingName).catch((err) => log.warn({ err: String(err), thing: sim.thingName }, 'upstream session not closed'));
      // What HTTP and CoAP devices had subscribed here is now the new holder's to subscribe.
      deps.delivery.downlink.forgetHttp(imsi);
      deps.delivery.jobs.forget(sim);
    }
  });
  // A device talking to this node over HTTP, CoAP or UDP needs its thing's session (downlink, Jobs, files):
  // its SIM comes here, handed over as for an MQTT device (docs/cluster.md).
  deps.delivery.deviceHere.bring = async (sim) => {
    if (cluster.owns(sim.imsi)) return;
    const { handOverMs } = live.config.cluster;
    if (!(await cluster.acquire(sim.imsi, handOverMs))) throw new HeldElsewhereError(`SIM ${sim.imsi} is held by another node that did not hand it over within ${handOverMs} ms`);
  };
  // Only the node holding a SIM connects as its thing. A device connected here brings its SIM here: its
  // holder closes its session and hands it over; anything else (a lane left over from before a hand-over)
  // is refused rather than connect beside the holder.
  const { pool } = deps.upstream;
  pool.gate = async (thing) => {
    const sim = parts.routing.byThing(thing);
    if (!sim || cluster.owns(sim.imsi)) return;
    if (mqtt.isConnected(sim.imsi) && (await cluster.acquire(sim.imsi, live.config.cluster.handOverMs))) return;
    throw new HeldElsewhereError(`SIM ${sim.imsi} is held by another node`);
  };
  cluster.beforeHandOver = async (imsis) => {
    const things = imsis.map((imsi) => stores.simRouting.forRouting(imsi)?.thingName).filter((t): t is string => t !== undefined);
    await Promise.all(things.map((t) => pool.drop(t)));
  };
  if (live.config.listeners.mqtt.identity === 'radius') {
    parts.sessions.onEndedElsewhere((session) => {
      const n = mqtt.disconnectAddress(session.ip);
      if (n) log.info({ ip: session.ip, connections: n }, 'network session ended on another node; device disconnected');
    });
  }
}

const startedAt = new Date().toISOString();

/** The nodes sharing the database for GET /v1/cluster: the others from their heartbeats, or this one alone on SQLite. */
export function clusterView(live: Live, storage: GatewayStorage, upstream: UpstreamParts): () => Promise<ClusterView> {
  const node = nodeId(live.config);
  const pg = storage.postgres;
  if (!pg) {
    return async () => {
      const counts = await storage.stores.sims.counts(Date.now());
      const sims = counts.reduce((n, c) => n + c.total, 0);
      const nodes = [{ nodeId: node, alive: true, heartbeatAgeMs: 0, startedAt, simsOwned: sims, upstreamSessions: upstream.pool.size, outboxRows: storage.outbox.usage().rows }];
      return { storage: 'sqlite', node, nodes };
    };
  }
  return async () => ({
    storage: 'postgres',
    node: pg.cluster.nodeId,
    nodes: (await pg.cluster.nodes()).map((n) => ({
      nodeId: n.nodeId,
      alive: n.alive,
      heartbeatAgeMs: n.heartbeatAgeMs,
      startedAt: new Date(n.startedAt).toISOString(),
      simsOwned: n.simsOwned,
      upstreamSessions: typeof n.info.upstreamSessions === 'number' ? n.info.upstreamSessions : null,
      outboxRows: n.outboxRows,
    })),
  });
}
