import type { Logger } from 'pino';
import { KeyedTurns } from '../lib/keyed-turns.ts';
import type { GroupConfig } from '../config/schema.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { HeldDownlinkStore, HeldMessage } from '../storage/downlink.ts';
import type { Sim } from '../storage/sims.ts';
import type { DeviceCredentials } from '../vending/vendor.ts';
import type { AdmittedDevice } from './admission.ts';
import type { Metrics } from './metrics.ts';
import { type DeviceTopics, groupTopics, type TopicLimits, type TopicProblem } from './topics.ts';
import { HeldElsewhereError, SubscriptionLimitError, SubscriptionRefusedError, type UpstreamPool } from './upstream/session-pool.ts';

export interface DownlinkOptions {
  pool: UpstreamPool;
  credentials(sim: Sim): Promise<DeviceCredentials>;
  group(name: string): GroupConfig;
  limits: TopicLimits;
  store: HeldDownlinkStore;
  /** Whether the SIM's policy in IoT Core allows subscribing to this upstream filter (vending/policy.ts). */
  policyAllows(sim: Sim, upstreamFilter: string): boolean;
  audit: AuditStore;
  metrics: Metrics;
  log: Logger;
}

export class DownlinkRefusal extends Error {
  constructor(
    readonly reason: TopicProblem | 'subscription_limit' | 'not_in_policy' | 'upstream_refused',
    message: string,
  ) {
    super(message);
    this.name = 'DownlinkRefusal';
  }
}

/** retain: a retained message IoT Core sent because the subscription was just made (MQTT-3.3.1-9). */
export type Deliver = (deviceTopic: string, payload: Buffer, qos: 0 | 1, retain: boolean) => void;

/**
 * Commands down to devices. A device's subscription becomes a subscription on its own upstream session,
 * mapped through its group's template, so it only ever hears its own topics. MQTT devices get messages
 * at once; HTTP devices, asleep between requests, find them held (durably, bounded) on their next request.
 */
export class Downlink {
  /** HTTP devices whose downlink subscriptions are held, by IMSI: the timer that lets them go. */
  private readonly httpHolds = new Map<string, { timer: NodeJS.Timeout; release: () => void }>();
  /** Per SIM, its holds one after another. */
  private readonly holds = new KeyedTurns();

  constructor(private readonly opts: DownlinkOptions) {}

  /** The SIM's topics, filled as the uplink and delivery fill them (the IMEI it is bound to: its thing's attribute). */
  topicsFor(sim: Sim): DeviceTopics {
    return groupTopics(this.opts.group(sim.group), { thing: sim.thingName, imsi: sim.imsi, imei: sim.boundImei ?? '' });
  }

  /** Subscribes an MQTT device; resolves with the granted QoS. */
  async subscribe(device: AdmittedDevice, filter: string, qos: number, deliver: Deliver): Promise<0 | 1> {
    const topics = this.topicsFor(device.sim);
    const problem = topics.checkSubscribe(filter, this.opts.limits);
    if (problem) throw new DownlinkRefusal(problem, `cannot subscribe to ${filter}`);
    const upstream = topics.toUpstream(filter);
    this.checkPolicy(device.sim, upstream);
    const creds = await this.opts.credentials(device.sim);
    const wanted: 0 | 1 = qos >= 1 ? 1 : 0;
    try {
      return await this.opts.pool.subscribe(
        creds,
        upstream,
        wanted,
        (topic, payload, gotQos, retain) => {
          const deviceTopic = topics.toDevice(topic);
          if (deviceTopic === undefined) return; // cannot happen under a correct policy; never leak it
          this.opts.metrics.downlink.inc({ protocol: 'mqtt', result: 'delivered' });
          deliver(deviceTopic, payload, Math.min(gotQos, wanted) as 0 | 1, retain === true);
        },
        (reason) => this.refusedLater(device.sim, upstream, reason),
      );
    } catch (err) {
      if (err instanceof SubscriptionLimitError) throw new DownlinkRefusal('subscription_limit', err.message);
      if (err instanceof SubscriptionRefusedError) this.auditRefusal(device.sim, upstream, err.message);
      throw new DownlinkRefusal('upstream_refused', (err as Error).message);
    }
  }

  /** A filter the SIM's policy refuses is never sent upstream: IoT Core would close the session it shares with uplink. */
  private checkPolicy(sim: Sim, upstreamFilter: string): void {
    if (this.opts.policyAllows(sim, upstreamFilter)) return;
    const reason = `the policy of ${sim.thingName} does not allow iot:Subscribe to ${upstreamFilter}`;
    this.auditRefusal(sim, upstreamFilter, reason);
    throw new DownlinkRefusal('not_in_policy', reason);
  }

  /** IoT Core refused a filter on a later resubscribe: the pool dropped it; the device hears no more on it. */
  private refusedLater(sim: Sim, upstreamFilter: string, reason: string): void {
    this.opts.metrics.refusals.inc({ protocol: 'mqtt', reason: 'upstream_refused' });
    this.auditRefusal(sim, upstreamFilter, reason);
  }

  private auditRefusal(sim: Sim, upstreamFilter: string, reason: string): void {
    this.opts.audit.record('subscription_refused', sim.imsi, { filter: upstreamFilter, reason }).catch((err) => this.opts.log.error({ err: String(err) }, 'subscription refusal not audited'));
  }

  async unsubscribe(device: AdmittedDevice, filter: string): Promise<void> {
    await this.opts.pool.unsubscribe(device.sim.thingName, this.topicsFor(device.sim).toUpstream(filter));
  }

  /**
   * An HTTP device made a request: keep its group's downlink subscriptions for holdMs more, holding what
   * arrives for its next request. Runs in the background: a first request must not wait for vending.
   */
  touchHttp(device: AdmittedDevice): void {
    const cfg = this.opts.group(device.sim.group).httpDownlink;
    if (cfg.topics.length === 0) return;
    const { imsi } = device.sim;
    const existing = this.httpHolds.get(imsi);
    if (existing) existing.timer.refresh();
    else {
      const topics = this.topicsFor(device.sim);
      const release = () => this.releaseHttp(device, cfg.topics);
      const hold = { timer: setTimeout(release, cfg.holdMs).unref(), release };
      this.httpHolds.set(imsi, hold);
      for (const filter of cfg.topics) {
        const upstream = topics.toUpstream(filter);
        Promise.resolve()
          .then(() => this.checkPolicy(device.sim, upstream))
          .then(() => this.opts.credentials(device.sim))
          .then((creds) =>
            this.opts.pool.subscribe(
              creds,
              upstream,
              1,
              (topic, payload, qos) => {
                const deviceTopic = topics.toDevice(topic);
                if (deviceTopic === undefined) return;
                this.hold(imsi, { topic: deviceTopic, payload, qos, receivedAt: Date.now() }, cfg).catch((err) =>
                  this.opts.log.error({ imsi, topic: deviceTopic, err: String(err) }, 'downlink not held'),
                );
              },
              (reason) => this.refusedLater(device.sim, upstream, reason),
            ),
          )
          .catch((err) => {
            if (err instanceof SubscriptionRefusedError) this.auditRefusal(device.sim, upstream, err.message);
            // Another node kept the SIM: the device's next request here asks for it again.
            if (err instanceof HeldElsewhereError && this.httpHolds.get(imsi) === hold) this.forgetHttp(imsi);
            this.opts.log.warn({ thing: device.sim.thingName, filter, err: String(err) }, 'HTTP downlink subscription failed');
          });
      }
    }
  }

  /** Messages waiting for an HTTP device. */
  pending(imsi: string): HeldMessage[] {
    return this.opts.store.pending(imsi);
  }

  /** The response carrying these messages reached the device (over `protocol`): they are not returned again. */
  delivered(ids: number[], protocol: 'http' | 'coap' | 'udp' = 'http'): void {
    this.opts.store.remove(ids).catch((err) => this.opts.log.warn({ err: String(err) }, 'delivered downlink not removed; it may be sent again'));
    if (ids.length) this.opts.metrics.downlink.inc({ protocol, result: 'delivered' }, ids.length);
  }

  /**
   * The SIM's thing session is no longer here (another node holds the SIM): its HTTP subscriptions are let
   * go, so the device's next request here subscribes again (and brings the SIM back).
   */
  forgetHttp(imsi: string): void {
    const hold = this.httpHolds.get(imsi);
    if (!hold) return;
    clearTimeout(hold.timer);
    hold.release();
  }

  close(): void {
    this.httpHolds.forEach((h) => clearTimeout(h.timer));
    this.httpHolds.clear();
  }

  private async hold(imsi: string, msg: Omit<HeldMessage, 'id'>, cfg: GroupConfig['httpDownlink']): Promise<void> {
    // In arrival order per SIM: on PostgreSQL each call takes a connection of its own, and the oldest
    // must be the one cut when the device already holds maxMessages.
    const dropped = await this.holds.run(imsi, () => this.opts.store.hold(imsi, msg, cfg.maxMessages, cfg.ttlMs));
    this.opts.metrics.downlink.inc({ protocol: 'http', result: 'held' });
    for (const d of dropped) {
      this.opts.metrics.downlink.inc({ protocol: 'http', result: 'dropped' });
      this.opts.audit
        .record('downlink_dropped', imsi, { topic: d.topic, receivedAt: d.receivedAt, reason: `more than ${cfg.maxMessages} held` })
        .catch((err) => this.opts.log.warn({ imsi, err: String(err) }, 'dropped downlink not audited'));
    }
  }

  private releaseHttp(device: AdmittedDevice, filters: string[]): void {
    this.httpHolds.delete(device.sim.imsi);
    const topics = this.topicsFor(device.sim);
    for (const f of filters) void this.opts.pool.unsubscribe(device.sim.thingName, topics.toUpstream(f));
  }
}
