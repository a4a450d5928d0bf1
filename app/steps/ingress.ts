import type { Logger } from 'pino';
import type { z } from 'zod';
import type { identitySource } from '../../config/identity.ts';
import type { Config } from '../../config/schema.ts';
import { ClaimedIdentity } from '../../bridge/identity/claimed.ts';
import { RadiusIdentity } from '../../bridge/identity/radius.ts';
import type { IdentitySource } from '../../bridge/identity/source.ts';
import { StaticIdentity } from '../../bridge/identity/static.ts';
import { startHttpIngress } from '../../bridge/ingress/http.ts';
import { startMqttIngress, type MqttIngress } from '../../bridge/ingress/mqtt.ts';
import type { Metrics } from '../../bridge/metrics.ts';
import { startRadiusListener, type RadiusListener } from '../../bridge/radius/listener.ts';
import type { Stores } from '../../storage/index.ts';
import type { NetworkSession } from '../../storage/network-sessions.ts';
import { startLowpowerIngress } from '../lowpower.ts';
import type { DeliveryParts } from './delivery.ts';
import { groupOf, type Live } from './live.ts';

type IdentitySourceName = z.infer<typeof identitySource>;

export interface IngressParts {
  radius?: RadiusListener;
  mqtt: MqttIngress;
  http: Awaited<ReturnType<typeof startHttpIngress>>;
  lowpower: Awaited<ReturnType<typeof startLowpowerIngress>>;
  /** Stops every listener. */
  close(): Promise<void>;
}

interface IngressDeps {
  stores: Stores;
  delivery: DeliveryParts;
  metrics: Metrics;
  log: Logger;
}

/** The RADIUS listener and the device listeners (MQTT, HTTP, CoAP, UDP), each with its identity source. */
export async function startIngress(live: Live, deps: IngressDeps): Promise<IngressParts> {
  const config = live.config;
  const { admission, uplink, downlink, connectivity, jobs, files } = deps.delivery;
  const { metrics, log } = deps;
  const radius = await startRadius(config, deps);
  const sources: Record<IdentitySourceName, () => IdentitySource> = {
    claimed: () => new ClaimedIdentity(),
    static: () => new StaticIdentity(config.identity.static),
    radius: () => new RadiusIdentity(radius!.sessions),
  };

  // What every device listener is built from.
  const common = { admission, uplink, downlink, metrics };
  const mqtt = await startMqttIngress({
    ...config.listeners.mqtt,
    ...common,
    maxClientIdBytes: config.limits.maxClientIdBytes,
    identity: sources[config.listeners.mqtt.identity](),
    connectivity,
    audit: deps.stores.audit,
    sessions: deps.stores.mqttSessions,
    group: groupOf(live),
    simOf: (imsi) => deps.stores.simRouting.forRouting(imsi),
    // On PostgreSQL, sessions are taken up by the node holding their SIM (app/steps/cluster.ts).
    takeUpAtStart: !config.storage.url,
    log: log.child({ component: 'mqtt' }),
  });
  const http = await startHttpIngress({
    ...config.listeners.http,
    ...common,
    maxPayloadBytes: config.limits.maxPayloadBytes,
    identity: sources[config.listeners.http.identity](),
    jobs,
    files,
    log: log.child({ component: 'http' }),
  }).catch(async (err) => {
    await mqtt.close();
    await radius?.close();
    throw err;
  });
  const source = (name: IdentitySourceName) => sources[name]();
  const sims = deps.stores.simRouting;
  const lowpower = await startLowpowerIngress(config, { ...common, jobs, files, sims, group: groupOf(live), source, log }).catch(async (err) => {
    await Promise.all([mqtt.close(), http.close(), radius?.close()]);
    throw err;
  });
  if (radius) followNetworkSessions(config, radius, mqtt, deps);
  return {
    radius,
    mqtt,
    http,
    lowpower,
    close: async () => void (await Promise.all([mqtt.close(), http.close(), lowpower.close(), radius?.close()])),
  };
}

/** The RADIUS accounting listener, when enabled; its counters reach the metrics. */
async function startRadius(config: Config, deps: IngressDeps): Promise<RadiusListener | undefined> {
  if (!config.radius.enabled) return undefined;
  const radius = await startRadiusListener({
    host: config.radius.host,
    port: config.radius.port,
    clients: config.radius.clients,
    sessions: { store: deps.stores.networkSessions, lookup: deps.stores.sessionLookup },
    replyCacheMs: config.radius.replyCacheMs,
    sessionTimeoutMs: config.radius.sessionTimeoutMs,
    logger: deps.log.child({ component: 'radius' }),
  });
  deps.metrics.watchRadius(() => radius.counters);
  return radius;
}

/** Network sessions starting and ending move devices on and off line. */
function followNetworkSessions(config: Config, radius: RadiusListener, mqtt: MqttIngress, deps: IngressDeps): void {
  const { log } = deps;
  const { connectivity } = deps.delivery;
  // A device identified by its network session loses its connection when that session ends.
  if (config.listeners.mqtt.identity === 'radius') {
    radius.on('session-end', (session, cause) => {
      const n = mqtt.disconnectAddress(session.ip);
      if (n) log.info({ ip: session.ip, cause, connections: n }, 'network session ended; device disconnected');
    });
  }
  // A sleeping device is online while its network session lives, not only while it talks to us.
  const onNetwork = (online: boolean) => (session: NetworkSession) =>
    void deps.stores.sims.get(session.imsi).then(
      (sim) => sim && connectivity.report(sim, { online, ip: session.ip, rat: session.ratType, via: 'radius' }),
      (err) => log.warn({ err: String(err) }, 'connectivity not reported'),
    );
  radius.on('session-start', onNetwork(true));
  radius.on('session-end', onNetwork(false));
}
