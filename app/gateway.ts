import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import { sqliteStores, type Stores } from '../storage/index.ts';
import { assertPrivateDirectory, freeBytes } from '../storage/files.ts';
import { Outbox } from '../storage/outbox.ts';
import { workerWriter } from '../storage/outbox-commit.ts';
import { createVending } from '../vending/index.ts';
import { fillName, groupPolicy, policyAllowsSubscribe } from '../vending/policy.ts';
import { changedGroups } from '../vending/policy-sync.ts';
import { thingAttributes } from '../vending/steps.ts';
import { startAdmin } from '../admin/index.ts';
import { KeyCipher } from '../vending/key-cipher.ts';
import { checkMasterKey, loadMasterKey, loadPreviousMasterKeys } from '../vending/master-key.ts';
import { Admission } from '../bridge/admission.ts';
import { Connectivity } from '../bridge/connectivity.ts';
import { BatchSchedules } from '../bridge/batching/schedules.ts';
import { Dispatcher } from '../bridge/dispatcher.ts';
import { Downlink } from '../bridge/downlink.ts';
import type { NetworkSession } from '../storage/network-sessions.ts';
import { describeFinding, identityFindings, type identitySource } from '../config/identity.ts';
import type { z } from 'zod';
import { ClaimedIdentity } from '../bridge/identity/claimed.ts';
import { RadiusIdentity } from '../bridge/identity/radius.ts';
import type { IdentitySource } from '../bridge/identity/source.ts';
import { StaticIdentity } from '../bridge/identity/static.ts';
import { replayWindow, startRadiusListener } from '../bridge/radius/listener.ts';
import { startHttpIngress } from '../bridge/ingress/http.ts';
import { startMqttIngress } from '../bridge/ingress/mqtt.ts';
import { lowpowerChecks, startLowpowerIngress } from './lowpower.ts';
import { createMetrics, type Metrics } from '../bridge/metrics.ts';
import { Uplink } from '../bridge/uplink.ts';
import { UpstreamPool } from '../bridge/upstream/session-pool.ts';
import { upstreamTrust } from '../bridge/upstream/trust.ts';
import { UpstreamHealth, watchControlPlane } from '../bridge/upstream/health.ts';

type IdentitySourceName = z.infer<typeof identitySource>;

/** Sections bound at start (sockets, files, sessions): a reload reports them instead of applying them. */
const restartOnlyKeys = ['mode', 'dataDir', 'listeners', 'identity', 'radius', 'storage', 'vending', 'upstream', 'admin', 'sandbox', 'limits'] as const;

export interface Gateway {
  mqttPort: number;
  httpPort: number;
  coapPort?: number;
  udpPort?: number;
  radiusPort?: number;
  adminPort?: number;
  /** Set when IoT Core could not be reached at start: the banner says so. */
  upstreamWarning?: string;
  db: Db;
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
  // Outside the sandbox the data directory holds real payloads and identifiers: it must be private.
  if (config.mode !== 'sandbox') assertPrivateDirectory(config.dataDir);
  const db = openDatabase({ file: join(config.dataDir, 'simbridge.db'), synchronous: config.storage.synchronous, cacheMb: config.storage.cacheMb });
  try {
    const cipher = new KeyCipher(...masterKeys(config, env));
    const stores = sqliteStores(db, Date.now, { replayWindowMs: replayWindow(config.radius.sessionTimeoutMs) });
    await checkMasterKey(stores, cipher);
    return await assemble(config, log, db, stores, cipher, env);
  } catch (err) {
    db.close();
    throw err;
  }
}

/** The current master key and, during a rotation, the previous ones. */
function masterKeys(config: Config, env: NodeJS.ProcessEnv): [Buffer, Buffer[]] {
  const current = loadMasterKey({ env, file: config.security.masterKeyFile, generateAt: config.mode === 'sandbox' ? join(config.dataDir, 'master.key') : undefined });
  return [current, loadPreviousMasterKeys({ env, files: config.security.previousMasterKeyFiles })];
}

async function assemble(config: Config, log: Logger, db: Db, stores: Stores, cipher: KeyCipher, env: NodeJS.ProcessEnv): Promise<Gateway> {
  const { audit } = stores;
  // The per-message path (admission, delivery) reads SIMs from this store's memory.
  const sims = stores.simRouting;
  sims.warmRoutingCache();
  const metrics = createMetrics(() => outbox.byGroup());
  const writer = workerWriter({ file: db.name, synchronous: config.storage.synchronous, cacheMb: config.storage.cacheMb }, (s) => metrics.outboxCommitSeconds.observe(s));
  const outbox = new Outbox(db, writer, config.storage.commitMaxRows, config.storage.deliveryCacheMb * 1024 * 1024);
  // A SIM whose group was removed from the config falls back to the default group.
  // Closures below read `config` when called, so a reload (which replaces it) applies to what comes next.
  const group = (name: string) => config.groups[name] ?? config.groups[config.sims.defaultGroup]!;

  // When each group policy last got a new version: IoT Core applies it minutes later.
  const policyUpdatedAt = new Map<string, number>();
  const { vendor, provider } = createVending(config.vending, {
    sims: stores.sims,
    credentials: stores.credentials,
    cipher,
    audit,
    log: log.child({ component: 'vending' }),
    policyFor: (g) => groupPolicy(config, g),
    onVended: (s) => (metrics.vends.inc({ result: 'ok' }), metrics.vendSeconds.observe(s)),
    onFailure: () => metrics.vends.inc({ result: 'failed' }),
    onQueueDepth: (d) => metrics.vendQueueDepth.set(d),
    onPolicyUpdated: (name) => policyUpdatedAt.set(name, Date.now()),
    needsDataEndpoint: !config.upstream.endpoint,
  });

  const health = new UpstreamHealth();
  const pool = new UpstreamPool({
    endpoint: async () => config.upstream.endpoint ?? (await vendor.dataEndpoint()),
    onConnect: (ok, detail) => health.record('upstream', ok, detail),
    port: config.upstream.port,
    caPem: upstreamTrust(config.upstream.caFile),
    keepAliveSeconds: config.upstream.keepAliveSeconds,
    connectTimeoutMs: config.upstream.connectTimeoutMs,
    operationTimeoutMs: config.upstream.operationTimeoutMs,
    maxSessions: config.upstream.maxSessions,
    idleTimeoutMs: config.upstream.idleTimeoutMs,
    connectsPerSecond: config.upstream.connectsPerSecond,
    minConnectIntervalMs: config.upstream.minConnectIntervalMs,
    publishesPerSecond: config.upstream.publishesPerSecond,
    bytesPerSecond: config.upstream.bytesPerSecond,
    publishBurst: config.upstream.publishBurst,
    // The largest message (payload and topic) must fit in one burst.
    byteBurst: config.limits.maxPayloadBytes + config.limits.maxTopicBytes,
    maxSubscriptions: config.upstream.maxSubscriptions,
    threads: config.upstream.threads,
    metrics,
    log: log.child({ component: 'upstream' }),
  });

  // A rotated certificate: the session moves to it, then the vendor retires the old one.
  vendor.onRotated((ev) => pool.replace(ev.credentials, config.vending.rotation.retireAfterMs));
  // A revoked certificate: its session goes at once (IoT Core would drop it too).
  vendor.onRevoked((ev) => pool.drop(ev.thingName));

  const dispatcher = new Dispatcher({
    outbox,
    sims,
    credentials: (sim) => vendor.ensure(sim),
    pool,
    group,
    maxMessageBytes: config.limits.maxPayloadBytes,
    maxInflight: config.upstream.maxInflight,
    maxDeliveryAttempts: config.upstream.maxDeliveryAttempts,
    changedRecently: (sim, issuedAt) =>
      Date.now() - Math.max(issuedAt ?? 0, policyUpdatedAt.get(groupPolicy(config, sim.group).name) ?? 0) < config.upstream.propagationGraceMs,
    onDeadLetter: (msg, reason) =>
      void audit.record('dead_letter', msg.imsi, { id: msg.id, topic: msg.deviceTopic, reason }).catch((err) => log.error({ err: String(err) }, 'dead letter not audited')),
    retryDelayMs: config.upstream.retryDelayMs,
    retryMaxDelayMs: config.upstream.retryMaxDelayMs,
    metrics,
    log: log.child({ component: 'dispatcher' }),
  });

  const admission = new Admission({
    routing: sims,
    sims: stores.sims,
    audit,
    unknownSims: () => config.sims.unknown,
    defaultGroup: () => config.sims.defaultGroup,
    group,
    thingName: (imsi, g) => fillName(config.vending.thingName, { imsi, group: g }),
    onImeiViolation: (sim) => {
      if (group(sim.group).revokeOnImeiViolation) void vendor.revoke(sim.imsi, 'imei_lock_violation').catch((err) => log.warn({ err: String(err) }, 'revocation failed'));
    },
  });
  const connectivity = new Connectivity({
    outbox,
    group,
    audit,
    answerWaitMs: config.upstream.shadowAnswerWaitMs,
    listenRejected: async (sim, onRejected) => {
      const topic = `$aws/things/${sim.thingName}/shadow/update/rejected`;
      await pool.subscribe(await vendor.ensure(sim), topic, 0, (_t, payload) => onRejected(payload));
      return () => pool.unsubscribe(sim.thingName, topic);
    },
    log: log.child({ component: 'connectivity' }),
  });
  const downlink = new Downlink({
    pool,
    credentials: (sim) => vendor.ensure(sim),
    group,
    limits: config.limits,
    store: stores.downlink,
    policyAllows: (sim, filter) =>
      policyAllowsSubscribe(groupPolicy(config, sim.group).topicTemplates, filter, {
        name: sim.thingName,
        attributes: thingAttributes(sim, config.vending.thingAttributes),
      }),
    audit,
    metrics,
    log: log.child({ component: 'downlink' }),
  });
  const uplink = new Uplink({ outbox, limits: config.limits, quota: () => config.storage.outbox, group, audit, metrics });
  // Devices are let in once the worker threads have booted: a first wave of devices would otherwise
  // wait for the writer thread to load, and share the cores with both threads' start-up.
  await Promise.all([writer.ready(), pool.ready()]);

  const radius = config.radius.enabled
    ? await startRadiusListener({
        host: config.radius.host,
        port: config.radius.port,
        clients: config.radius.clients,
        sessions: { store: stores.networkSessions, lookup: stores.sessionLookup },
        replyCacheMs: config.radius.replyCacheMs,
        sessionTimeoutMs: config.radius.sessionTimeoutMs,
        logger: log.child({ component: 'radius' }),
      })
    : undefined;
  if (radius) metrics.watchRadius(() => radius.counters);
  const sources: Record<IdentitySourceName, () => IdentitySource> = {
    claimed: () => new ClaimedIdentity(),
    static: () => new StaticIdentity(config.identity.static),
    radius: () => new RadiusIdentity(radius!.sessions),
  };

  const mqtt = await startMqttIngress({
    ...config.listeners.mqtt,
    maxClientIdBytes: config.limits.maxClientIdBytes,
    identity: sources[config.listeners.mqtt.identity](),
    admission,
    uplink,
    downlink,
    connectivity,
    metrics,
    audit,
    log: log.child({ component: 'mqtt' }),
  });
  const http = await startHttpIngress({
    ...config.listeners.http,
    maxPayloadBytes: config.limits.maxPayloadBytes,
    identity: sources[config.listeners.http.identity](),
    admission,
    uplink,
    downlink,
    metrics,
    log: log.child({ component: 'http' }),
  }).catch(async (err) => {
    await mqtt.close();
    await radius?.close();
    throw err;
  });
  const source = (name: IdentitySourceName) => sources[name]();
  const lowpower = await startLowpowerIngress(config, { admission, uplink, downlink, metrics, sims, group, source, log }).catch(async (err) => {
    await Promise.all([mqtt.close(), http.close(), radius?.close()]);
    throw err;
  });
  // A device identified by its network session loses its connection when that session ends.
  if (radius && config.listeners.mqtt.identity === 'radius') {
    radius.on('session-end', (session, cause) => {
      const n = mqtt.disconnectAddress(session.ip);
      if (n) log.info({ ip: session.ip, cause, connections: n }, 'network session ended; device disconnected');
    });
  }
  // A sleeping device is online while its network session lives, not only while it talks to us.
  if (radius) {
    const onNetwork = (online: boolean) => (session: NetworkSession) =>
      void stores.sims.get(session.imsi).then(
        (sim) => sim && connectivity.report(sim, { online, ip: session.ip, rat: session.ratType, via: 'radius' }),
        (err) => log.warn({ err: String(err) }, 'connectivity not reported'),
      );
    radius.on('session-start', onNetwork(true));
    radius.on('session-end', onNetwork(false));
  }
  dispatcher.start();
  // Asked at start so that an operator learns now, not at the first device, that AWS cannot be reached.
  const controlPlane = watchControlPlane({ health, dataEndpoint: (signal) => provider.dataEndpoint(signal), waitMs: config.upstream.startupCheckMs, retryMs: config.upstream.healthRetryMs });
  const controlPlaneAtStart = await controlPlane.first;
  // A topic template changed while the gateway was down reaches devices vended before, not only new ones.
  void vendor.syncPolicies(Object.keys(config.groups));
  const schedules = new BatchSchedules((g) => dispatcher.release(g));
  schedules.apply(config.groups);

  const diskHasRoom = () => {
    try {
      return freeBytes(config.dataDir) >= config.storage.minFreeMb * 1024 * 1024;
    } catch {
      return false;
    }
  };
  const admin = config.admin.enabled
    ? await startAdmin(config.admin, {
        stores,
        metrics: metrics.registry,
        log: log.child({ component: 'admin' }),
        ready: () => {
          const upstream = health.checks();
          // A full disk makes every commit fail (503 to devices): a balancer should send them elsewhere.
          const checks = { database: db.open, disk: diskHasRoom(), mqtt: mqtt.listening(), http: http.listening(), ...lowpowerChecks(lowpower), ...upstream.checks };
          // Not only 'insecure': a reload may relax groups while the restart-only identity section stays.
          const warnings = identityFindings(config).filter((f) => f.severity !== 'note').map(describeFinding);
          return { ok: Object.values(checks).every(Boolean), checks, reasons: upstream.reasons, warnings };
        },
        groups: () => config.groups,
        defaultGroup: () => config.sims.defaultGroup,
        thingName: (imsi, g) => fillName(config.vending.thingName, { imsi, group: g }),
        revoke: async (imsi, reason) => {
          await vendor.revoke(imsi, reason);
        },
        upstreamState: (thing) => {
          const session = pool.peek(thing);
          return session ? { state: 'connected', since: session.openedAt } : { state: 'closed' };
        },
        connected: (imsi) => mqtt.isConnected(imsi),
        maskIdentifiers: config.privacy.maskIdentifiers,
      })
    : undefined;

  const reloadKeys = async (next: Config) => {
    try {
      const keys = masterKeys(next, env);
      await checkMasterKey(stores, new KeyCipher(...keys));
      cipher.setKeys(...keys);
      log.info({ previousKeys: keys[1].length }, 'master keys reloaded');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'new master keys refused; the running ones stay');
    }
  };

  let closing: Promise<void> | undefined;
  return {
    mqttPort: mqtt.port,
    httpPort: http.port,
    coapPort: lowpower.coap?.port,
    udpPort: lowpower.udp?.port,
    radiusPort: radius?.port,
    adminPort: admin?.port,
    upstreamWarning:
      controlPlaneAtStart === undefined
        ? `IoT Core's control plane has not answered DescribeEndpoint within ${config.upstream.startupCheckMs} ms: no device can be vended until it does`
        : controlPlaneAtStart.ok
          ? undefined
          : `${controlPlaneAtStart.detail}: no device can be vended or delivered until this is fixed (simbridge doctor tells why)`,
    db,
    metrics,
    reload(next: Config) {
      // Outbox quotas are read per message and apply live; the rest of `storage` is bound to the open database.
      const comparable = (c: Config) => ({ ...c, storage: { ...c.storage, outbox: undefined } });
      // A new key ring (a master-key rotation) applies once it opens this database's keys.
      if (JSON.stringify(next.security) !== JSON.stringify(config.security)) void reloadKeys(next);
      const needRestart = restartOnlyKeys.filter((k) => JSON.stringify(comparable(next)[k]) !== JSON.stringify(comparable(config)[k]));
      const kept = Object.fromEntries(restartOnlyKeys.map((k) => [k, config[k]]));
      const previous = config;
      config = { ...next, ...kept, storage: { ...config.storage, outbox: next.storage.outbox } } as Config;
      schedules.apply(config.groups);
      void vendor.syncPolicies(changedGroups(Object.keys(config.groups), (g) => groupPolicy(previous, g), (g) => groupPolicy(config, g)));
      // New thresholds may make open batches due now.
      dispatcher.start();
      return needRestart;
    },
    close() {
      closing ??= (async () => {
        controlPlane.stop();
        await Promise.all([mqtt.close(), http.close(), lowpower.close(), radius?.close(), admin?.close()]);
        downlink.close();
        schedules.stop();
        await outbox.settle();
        await dispatcher.flush(config.shutdown.flushDeadlineMs);
        vendor.stop();
        await dispatcher.stop(config.shutdown.graceMs);
        // Upstream first: aws-crt must let go of its callbacks before any thread of this process stops.
        await pool.closeAll();
        await outbox.close();
        db.close();
      })();
      return closing;
    },
  };
}
