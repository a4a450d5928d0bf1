import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { Admission } from '../../bridge/admission.ts';
import { BatchSchedules } from '../../bridge/batching/schedules.ts';
import { Connectivity } from '../../bridge/connectivity.ts';
import { Dispatcher } from '../../bridge/dispatcher.ts';
import { Downlink } from '../../bridge/downlink.ts';
import { DeviceJobs } from '../../bridge/jobs.ts';
import { FileCache, type StreamSource } from '../../bridge/files/cache.ts';
import { StreamReader } from '../../bridge/files/streams.ts';
import { DeviceFiles } from '../../bridge/files/device-files.ts';
import type { Metrics } from '../../bridge/metrics.ts';
import { Uplink } from '../../bridge/uplink.ts';
import type { GatewayOutbox, Stores } from '../../storage/index.ts';
import type { Sim } from '../../storage/sims.ts';
import { fillName, groupPolicy, policyAllowsSubscribe } from '../../vending/policy.ts';
import { thingAttributes } from '../../vending/steps.ts';
import { groupOf, type Live } from './live.ts';
import type { UpstreamParts } from './upstream.ts';
import type { VendingParts } from './vending.ts';

/** The message path between the listeners and IoT Core. */
export interface DeliveryParts {
  /** Who may send, and as which SIM (identity, IMEI lock, unknown SIMs). */
  admission: Admission;
  /** Device messages into the outbox. */
  uplink: Uplink;
  /** The outbox out to IoT Core, one lane per device. */
  dispatcher: Dispatcher;
  /** IoT Core's messages back to devices. */
  downlink: Downlink;
  /** Online/offline reports to the device shadow. */
  connectivity: Connectivity;
  /** IoT Jobs asked and reported on behalf of sleeping HTTP devices. */
  jobs: DeviceJobs;
  /**
   * Before a thing's session is used on behalf of a device talking to this node (its downlink
   * subscriptions, Jobs, file streams): several nodes bring the SIM here first (app/steps/cluster.ts).
   */
  deviceHere: { bring(sim: Sim): Promise<void> };
  /** Files named by pending jobs, fetched once and served to devices. */
  files: DeviceFiles;
}

export function buildDelivery(
  live: Live,
  deps: { stores: Stores; outbox: GatewayOutbox; vending: VendingParts; upstream: UpstreamParts; metrics: Metrics; log: Logger },
): DeliveryParts {
  const { stores, outbox, metrics, log } = deps;
  const { vendor } = deps.vending;
  const { pool } = deps.upstream;
  const { audit } = stores;
  // The per-message path (admission, delivery) reads SIMs from this store's memory.
  const sims = stores.simRouting;
  const group = groupOf(live);
  const { upstream, limits } = live.config;
  const deviceHere = { bring: async (_sim: Sim): Promise<void> => undefined };
  const forDevice = async (sim: Sim) => {
    await deviceHere.bring(sim);
    return vendor.ensure(sim);
  };

  const dispatcher = new Dispatcher({
    outbox,
    sims,
    credentials: (sim) => vendor.ensure(sim),
    pool,
    group,
    maxMessageBytes: limits.maxPayloadBytes,
    maxInflight: upstream.maxInflight,
    maxDeliveryAttempts: upstream.maxDeliveryAttempts,
    changedRecently: deps.vending.changedRecently,
    onDeadLetter: (msg, reason) =>
      void audit.record('dead_letter', msg.imsi, { id: msg.id, topic: msg.deviceTopic, reason }).catch((err) => log.error({ err: String(err) }, 'dead letter not audited')),
    retryDelayMs: upstream.retryDelayMs,
    retryMaxDelayMs: upstream.retryMaxDelayMs,
    metrics,
    log: log.child({ component: 'dispatcher' }),
  });

  const admission = new Admission({
    routing: sims,
    sims: stores.sims,
    audit,
    unknownSims: () => live.config.sims.unknown,
    defaultGroup: () => live.config.sims.defaultGroup,
    group,
    thingName: (imsi, g) => fillName(live.config.vending.thingName, { imsi, group: g }),
    onImeiViolation: (sim) => {
      if (group(sim.group).revokeOnImeiViolation) void vendor.revoke(sim.imsi, 'imei_lock_violation').catch((err) => log.warn({ err: String(err) }, 'revocation failed'));
    },
  });

  const connectivity = new Connectivity({
    outbox,
    group,
    audit,
    answerWaitMs: upstream.shadowAnswerWaitMs,
    listenRejected: async (sim, onRejected) => {
      const topic = `$aws/things/${sim.thingName}/shadow/update/rejected`;
      await pool.subscribe(await vendor.ensure(sim), topic, 0, (_t, payload) => onRejected(payload));
      return () => pool.unsubscribe(sim.thingName, topic);
    },
    log: log.child({ component: 'connectivity' }),
  });

  const downlink = new Downlink({
    pool,
    credentials: forDevice,
    group,
    limits,
    store: stores.downlink,
    policyAllows: (sim, filter) =>
      policyAllowsSubscribe(groupPolicy(live.config, sim.group).topicTemplates, filter, {
        name: sim.thingName,
        attributes: thingAttributes(sim, live.config.vending.thingAttributes),
      }),
    audit,
    metrics,
    log: log.child({ component: 'downlink' }),
  });

  const jobs = new DeviceJobs({ pool, credentials: forDevice, group, settings: () => live.config.jobs, audit, metrics, log: log.child({ component: 'jobs' }) });
  const uplink = new Uplink({ outbox, limits, quota: () => live.config.storage.outbox, group, audit, metrics });
  const streams = new StreamReader({ pool, credentials: forDevice, settings: () => live.config.files, log: log.child({ component: 'files' }) });
  const files = new DeviceFiles({ jobs, cache: openFileCache(live, metrics, log, streams), prefetch: () => live.config.files, audit, log: log.child({ component: 'files' }) });
  return { admission, uplink, dispatcher, downlink, connectivity, jobs, files, deviceHere };
}

/** Each group's batch schedule, releasing its batches when due; a reload applies the new groups. */
export function startBatchSchedules(live: Live, dispatcher: Dispatcher): BatchSchedules {
  const schedules = new BatchSchedules((g) => dispatcher.release(g));
  schedules.apply(live.config.groups);
  return schedules;
}

/** The file cache under dataDir (files.*), trusting files.caFile for downloads when set. */
function openFileCache(live: Live, metrics: Metrics, log: Logger, streams: StreamSource): FileCache {
  const { files, dataDir } = live.config;
  return new FileCache({ ...files, dir: resolve(dataDir, files.dir), ca: files.caFile ? readFileSync(files.caFile, 'utf8') : undefined, streams, metrics, log: log.child({ component: 'files' }) });
}
