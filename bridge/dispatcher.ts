import type { Logger } from 'pino';
import type { GroupConfig } from '../config/schema.ts';
import type { DeliveryOutbox, MaybePromise, OutboxMessage } from '../storage/outbox.ts';
import type { Sim, SimRoutingStore } from '../storage/sims.ts';
import { VendingRefusedError, type DeviceCredentials } from '../vending/vendor.ts';
import { plan, type OpenBatch, type PlanInput, type Unit } from './batching/planner.ts';
import { Lane, type PlanBasis, type PlanStamp, type Suspect } from './delivery-lane.ts';
import type { Metrics } from './metrics.ts';
import { groupBatchTopic, groupTopics } from './topics.ts';
import type { UpstreamPool, UpstreamSession } from './upstream/session-pool.ts';

export interface DispatcherOptions {
  outbox: DeliveryOutbox;
  sims: SimRoutingStore;
  /** Credentials of a SIM, vending it first when needed. */
  credentials(sim: Sim): Promise<DeviceCredentials>;
  pool: UpstreamPool;
  /** The SIM's group as configured now (reloads apply to the next batch). */
  group(name: string): GroupConfig;
  /** Hard cap of one upstream message, topic included (IoT Core: 128 KB). */
  maxMessageBytes: number;
  maxInflight: number;
  /** Failed deliveries of one message, each followed by a successful reconnect, before it is dead-lettered. */
  maxDeliveryAttempts: number;
  /** A refusal now may be IoT Core still propagating the SIM's new certificate or its group's new policy: not counted. */
  changedRecently?(sim: Sim, certificateIssuedAt: number | undefined): boolean;
  retryDelayMs: number;
  retryMaxDelayMs: number;
  metrics: Metrics;
  log: Logger;
  onDeadLetter?(msg: OutboxMessage, reason: string): void;
}

/** What planning found due: units to send now, or how long until the open batch falls due. */
interface Due {
  units: Unit[];
  waitMs?: number;
}

const BILLING_UNIT = 5120;
const MAX_PEEK = 5000;

/**
 * Moves each SIM's outbox rows upstream on that SIM's own session, in order, packed by its group's
 * batching policy, with up to maxInflight QoS 1 publishes outstanding. Rows are deleted only after the
 * PUBACK of the publish that carried them; after a failure the SIM's remaining rows are resent from the
 * oldest, so delivery is at-least-once and FIFO per device. IoT Core closes the connection on a publish
 * it refuses (MQTT 3.1.1); a unit that keeps doing that is sent alone, and after maxDeliveryAttempts its
 * rows go to the dead letters so they cannot block their device.
 *
 * Each device has one lane (delivery-lane.ts) holding all of its state; the pump of a lane is the only
 * code that publishes its rows, so order per device needs no lock.
 */
export class Dispatcher {
  private readonly lanes = new Map<string, Lane>();
  /** Per group: rows received up to this time are due now (a schedule fired). */
  private readonly released = new Map<string, number>();
  /** While flushing (shutdown), every open batch is due. */
  private flushing = false;
  private stopped = false;

  constructor(private readonly opts: DispatcherOptions) {
    opts.outbox.onCommitted((committed) => committed.forEach((rows, imsi) => this.arrived(this.lane(imsi), rows)));
  }

  /** Resumes delivery of everything left in the outbox (after a restart, a reload). */
  start(): void {
    this.eachSimWithMessages((imsi) => this.wake(imsi));
  }

  /** A group's schedule fired: what its devices hold now is due. */
  release(group: string, at = Date.now()): void {
    this.released.set(group, at);
    this.eachSimWithMessages((imsi) => {
      if (this.opts.sims.get(imsi)?.group === group) this.wake(imsi);
    });
  }

  wake(imsi: string): void {
    this.wakeLane(this.lane(imsi));
  }

  /** Sends every open batch now and waits until the outbox is empty or the deadline passes. */
  async flush(deadlineMs: number): Promise<void> {
    this.flushing = true;
    this.start();
    const until = Date.now() + deadlineMs;
    while (Date.now() < until && this.opts.outbox.usage().rows > 0) await new Promise((r) => setTimeout(r, 25));
  }

  /** Stops starting new publishes and waits (bounded) for those in flight. */
  async stop(graceMs: number): Promise<void> {
    this.stopped = true;
    for (const lane of this.lanes.values()) lane.stopTimer();
    const all = Promise.allSettled([...this.lanes.values()].flatMap((lane) => (lane.pump ? [lane.pump.done] : [])));
    await Promise.race([all, new Promise((r) => setTimeout(r, graceMs).unref())]);
  }

  private lane(imsi: string): Lane {
    let lane = this.lanes.get(imsi);
    if (!lane) this.lanes.set(imsi, (lane = new Lane(imsi)));
    return lane;
  }

  private eachSimWithMessages(each: (imsi: string) => void): void {
    const sims = this.opts.outbox.simsWithMessages();
    if (Array.isArray(sims)) sims.forEach(each);
    else sims.then((list) => list.forEach(each), (err) => this.opts.log.error({ err: String(err) }, 'outbox not readable; delivery not resumed'));
  }

  private wakeLane(lane: Lane): void {
    if (this.stopped) return;
    lane.stopTimer();
    if (lane.pump) {
      lane.pump.again = true;
      return;
    }
    const pump = { again: false, done: Promise.resolve() };
    pump.done = this.pump(lane, pump)
      // Only a store failing outside the retry loop (reading the SIM, dead-lettering a refused SIM's
      // queue) ends up here: the rows stay queued for the next wake.
      .catch((err: unknown) => this.opts.log.error({ imsi: lane.imsi, err: String((err as Error)?.message ?? err) }, 'delivery stopped'))
      .finally(() => {
        lane.pump = undefined;
        if (pump.again && !this.stopped) this.wakeLane(lane);
      });
    lane.pump = pump;
  }

  /**
   * A commit brought new rows for a device. A device waiting on an open window batch has them join it,
   * and one with nothing queued before opens its first batch, both without a read or a pump while the
   * batch is not due; everything else wakes the device's pump.
   */
  private arrived(lane: Lane, rows: OutboxMessage[]): void {
    // Rows behind the cursor (the SIM held again): only a read from its oldest row finds them.
    const idle = !lane.pump && !this.stopped && !this.flushing && !this.rewound(lane);
    if (idle && lane.timer && lane.holding === 'open' && this.joinOpenBatch(lane, rows)) return;
    if (idle && !lane.timer && !lane.holding && this.openFirstBatch(lane, rows)) return;
    this.wakeLane(lane);
  }

  private async pump(lane: Lane, state: { again: boolean }): Promise<void> {
    let delay = this.opts.retryDelayMs;
    let wakeAt: number | undefined;
    while (!this.stopped) {
      state.again = false;
      const sim = this.opts.sims.forRouting(lane.imsi);
      if (!sim) {
        lane.cursor = 0;
        return;
      }
      if (this.rewound(lane)) {
        // Here, between drains, nothing is in flight: a cursor moved back now is not overwritten by a PUBACK.
        lane.rewinds = this.opts.outbox.rewinds(lane.imsi);
        lane.cursor = 0;
        lane.forget();
      }
      let session: UpstreamSession | undefined;
      try {
        // An open batch (window, schedule) needs no session yet: a sleepy fleet's first readings would
        // otherwise open every device's session at once, long before anything is due.
        const next = await this.dueUnits(lane, sim, 1);
        if (next.units.length === 0) {
          wakeAt = next.waitMs === undefined ? undefined : Date.now() + next.waitMs;
          if (state.again) continue;
          break;
        }
        // A warm session already holds the credentials: read and decrypt the key only to open one.
        const warm = this.opts.pool.peek(sim.thingName);
        session = warm && !warm.isClosed ? warm : await this.opts.pool.session(await this.opts.credentials(sim));
        // A suspect from an earlier failure may be dead-lettered now, which changes what is due.
        const planned = lane.suspect === undefined ? next.units : undefined;
        await this.judgeSuspect(lane, sim, this.opts.changedRecently?.(sim, session.creds.issuedAt) ?? false);
        wakeAt = await this.drain(lane, sim, session, planned);
        delay = this.opts.retryDelayMs;
        // Rows left beyond what drain read (a long backlog read in chunks) keep the pump going.
        const more = wakeAt === undefined && (await this.opts.outbox.peek(lane.imsi, lane.cursor, 1)).length > 0;
        if (!state.again && !more && !this.rewound(lane)) break;
      } catch (err) {
        // Resend whatever is left, from the oldest row (what was acked is already marked delivered).
        lane.cursor = 0;
        if (this.stopped) return;
        // Its session closed because another node holds the SIM now: nothing to retry here. Should it come
        // back, the outbox wakes the lane, which then starts at once instead of after a retry delay.
        if (!this.opts.outbox.holds(lane.imsi)) {
          if (session) await this.opts.pool.discard(session);
          return;
        }
        if (err instanceof VendingRefusedError) {
          // No certificate will ever come for this SIM (terminated, revoked): its queue cannot be delivered.
          await this.deadLetterAll(lane, `not delivered: ${err.message}`);
          return;
        }
        this.opts.log.warn({ thing: sim.thingName, err: String((err as Error)?.message ?? err) }, 'upstream delivery failed; will retry');
        if (session) await this.opts.pool.discard(session);
        await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random() / 2)).unref());
        delay = Math.min(delay * 2, this.opts.retryMaxDelayMs);
      }
    }
    if (this.stopped) return;
    if (wakeAt !== undefined) lane.wakeIn(wakeAt - Date.now(), () => this.wakeLane(lane));
  }

  /** After a reconnect: count the failure against the suspect unit, and dead-letter it past the limit. */
  private async judgeSuspect(lane: Lane, sim: Sim, changedRecently: boolean): Promise<void> {
    const suspect = lane.suspect;
    if (!suspect?.uncounted) return;
    suspect.uncounted = false;
    // Refused soon after a vend or a policy change: IoT Core may not apply it yet (propagation).
    if (changedRecently) return;
    suspect.failures++;
    if (suspect.failures < this.opts.maxDeliveryAttempts) return;
    const unit = await this.unitStartingAt(lane, sim, suspect.first);
    const reason = `refused upstream ${suspect.failures} times (${suspect.error})`;
    for (const row of unit?.rows ?? []) {
      await this.opts.outbox.deadLetter(row, reason);
      this.opts.metrics.deadLetters.inc({ reason: 'refused_upstream' });
      this.opts.onDeadLetter?.(row, reason);
    }
    this.opts.log.warn({ imsi: lane.imsi, rows: unit?.rows.length ?? 0, reason }, 'moved to dead letters');
    lane.suspect = undefined;
  }

  private async deadLetterAll(lane: Lane, reason: string): Promise<void> {
    lane.suspect = undefined;
    for (let rows = await this.opts.outbox.peek(lane.imsi, 0, 500); rows.length; rows = await this.opts.outbox.peek(lane.imsi, 0, 500)) {
      for (const row of rows) {
        await this.opts.outbox.deadLetter(row, reason);
        this.opts.metrics.deadLetters.inc({ reason: 'sim_refused' });
        this.opts.onDeadLetter?.(row, reason);
      }
    }
  }

  /** Whether the outbox asked for a read of the SIM from its oldest row since the lane's cursor was set. */
  private rewound(lane: Lane): boolean {
    return this.opts.outbox.rewinds(lane.imsi) !== lane.rewinds;
  }

  /** What a plan made for this SIM now, at the lane's cursor, is stamped with (see stillHolds). */
  private stamp(lane: Lane, sim: Sim): PlanStamp {
    return { group: sim.group, cfg: this.opts.group(sim.group).batching, imei: sim.boundImei, thing: sim.thingName, cursor: lane.cursor, removals: this.opts.outbox.removals(lane.imsi) };
  }

  /** The planner's inputs for a SIM in its group. */
  private basis(sim: Sim): PlanBasis {
    const group = this.opts.group(sim.group);
    const cfg = group.batching;
    const vars = { thing: sim.thingName, imsi: sim.imsi, imei: sim.boundImei ?? '' };
    return {
      cfg,
      topics: groupTopics(group, vars),
      identity: { imsi: sim.imsi, imei: sim.boundImei, thing: sim.thingName },
      batchTopic: groupBatchTopic(group, vars),
      maxMessageBytes: this.opts.maxMessageBytes,
    };
  }

  /** How many rows to read for up to maxUnits units: one per unit sent as is, a batch's worth (and one) per batch. */
  private readLimit(cfg: PlanBasis['cfg'], maxUnits: number): number {
    return cfg.policy === 'immediate' ? maxUnits : Math.min(MAX_PEEK, (cfg.maxMessages + 1) * maxUnits);
  }

  /** Reads up to limit rows after a row id; `more` tells whether rows were left beyond them. */
  private async read(imsi: string, afterId: number, limit: number): Promise<{ rows: OutboxMessage[]; more: boolean }> {
    const rows = await this.opts.outbox.peek(imsi, afterId, limit + 1);
    const more = rows.length > limit;
    if (more) rows.pop();
    return { rows, more };
  }

  /**
   * The units of a device due now after its lane's cursor, at most maxUnits, by its group's policy;
   * what the lane holds from its last plan is continued when it still holds, else the rows are read
   * again. What a plan leaves open stays with the lane.
   */
  private async dueUnits(lane: Lane, sim: Sim, maxUnits: number): Promise<Due> {
    const stamp = this.stamp(lane, sim);
    const held = lane.take(stamp);
    if (held && 'due' in held && !this.flushing && held.due.units.length <= maxUnits) {
      const { units, open, waitMs } = held.due;
      this.keepOpen(lane, { ...stamp, cursor: units.at(-1)!.rows.at(-1)!.id }, held.basis, open);
      return { units, waitMs };
    }
    const open = held && 'open' in held ? held : undefined;
    const { rows, more } = await this.read(lane.imsi, open ? open.lastRowId : stamp.cursor, this.readLimit(open?.basis.cfg ?? stamp.cfg, maxUnits));
    // Nothing new and nothing open: nothing to plan. Most drains end with this read.
    if (!open && rows.length === 0) return { units: [] };
    const basis = open?.basis ?? this.basis(sim);
    const releaseBefore = this.flushing ? Infinity : (this.released.get(sim.group) ?? -Infinity);
    const planned = plan(planInput(basis, rows, open?.open, more, releaseBefore));
    const units = planned.units.slice(0, maxUnits);
    if (units.length === planned.units.length) {
      this.keepOpen(lane, { ...stamp, cursor: units.at(-1)?.rows.at(-1)!.id ?? stamp.cursor }, basis, planned.open);
    }
    return { units, waitMs: planned.waitMs };
  }

  /** The unit that starts at a row, as it would go now whatever its batch's timing (a suspect to dead-letter). */
  private async unitStartingAt(lane: Lane, sim: Sim, firstRowId: number): Promise<Unit | undefined> {
    // Dead-lettering changes what the lane's plan was made from.
    lane.forget();
    const basis = this.basis(sim);
    const { rows, more } = await this.read(lane.imsi, firstRowId - 1, this.readLimit(basis.cfg, 1));
    return plan(planInput(basis, rows, undefined, more, Infinity)).units[0];
  }

  /** Leaves the batch a plan left open after its units with the lane, so the next plan continues it. */
  private keepOpen(lane: Lane, stamp: PlanStamp, basis: PlanBasis, open: OpenBatch | undefined): void {
    if (open) lane.hold({ stamp, basis, open, lastRowId: open.rows.at(-1)!.id });
  }

  /**
   * Newly committed rows of a device whose window batch is open and waiting: they join it here, as long
   * as it stays open. Returns false when the device needs a wake instead (what the lane held no longer
   * holds, or the batch is now due: the wake then sends what was planned here).
   */
  private joinOpenBatch(lane: Lane, rows: OutboxMessage[]): boolean {
    const sim = this.opts.sims.forRouting(lane.imsi);
    const held = sim && lane.take(this.stamp(lane, sim));
    if (!held || !('open' in held) || rows[0]!.id <= held.lastRowId) return false;
    const planned = plan(planInput(held.basis, rows, held.open, false, this.released.get(held.stamp.group) ?? -Infinity));
    if (planned.units.length > 0) {
      lane.hold({ stamp: held.stamp, basis: held.basis, due: { units: planned.units, open: planned.open, waitMs: planned.waitMs } });
      return false;
    }
    if (!planned.open) return false;
    // The planner extended the batch's own rows and builder: only the read position moves.
    lane.hold({ ...held, lastRowId: rows.at(-1)!.id });
    return true;
  }

  /**
   * The first rows of a device with nothing else queued: when they open a window batch that is not
   * due, the lane holds it with a timer, planned from the rows as they arrived. Returns false otherwise.
   */
  private openFirstBatch(lane: Lane, rows: OutboxMessage[]): boolean {
    // Older rows (queued, or delivered and not yet deleted) mean the pump must plan from the outbox.
    if (this.opts.outbox.usage(lane.imsi).rows !== rows.length) return false;
    const sim = this.opts.sims.forRouting(lane.imsi);
    if (!sim || this.opts.group(sim.group).batching.policy !== 'window') return false;
    const basis = this.basis(sim);
    const planned = plan(planInput(basis, rows, undefined, false, this.released.get(sim.group) ?? -Infinity));
    if (planned.units.length > 0 || planned.waitMs === undefined || !planned.open) return false;
    this.keepOpen(lane, this.stamp(lane, sim), basis, planned.open);
    lane.wakeIn(planned.waitMs, () => this.wakeLane(lane));
    return true;
  }

  /**
   * Publishes the device's due units until none are left; throws on the first failed publish. Returns
   * when the batch left open falls due, if one is.
   */
  private async drain(lane: Lane, sim: Sim, session: UpstreamSession, planned?: Unit[]): Promise<number | undefined> {
    const { metrics } = this.opts;
    /** Units published and not settled yet, by their first row id. */
    const inflight = new Set<number>();
    /** Units published and not acknowledged yet (a unit stays in flight while its rows are removed). */
    const unacked = new Set<number>();
    let failure: unknown;
    let wakeAt: number | undefined;
    // Waiting for any one publish to settle: one resolver the next settling publish calls, rather than
    // Promise.race, which would add a reaction to every publish in flight at each wait.
    let settled: (() => void) | undefined;
    const oneSettles = () => new Promise<void>((resolve) => (settled = resolve));
    // After a read that found the queue empty, read again only once this drain is done: rows committed
    // meanwhile wake the pump, which drains again (a read per acknowledgement found nothing 9 times in 10).
    let exhausted = false;
    // The first delivery of a device's own message since its binding is noted once (the installer's "Done").
    let deliveryNoted = sim.deliveredAt !== null;
    const acked = (unit: Unit, inDoubt: Suspect | undefined) => {
      this.count(sim, unit);
      // Rows on $-topics are the gateway's own (shadow reports), not the device's.
      if (!deliveryNoted && unit.rows.some((r) => !r.deviceTopic.startsWith('$'))) {
        deliveryNoted = true;
        this.opts.sims.markDelivered(sim.imsi);
      }
      // A suspect goes alone and first: once that unit is acknowledged, the doubt is gone.
      if (inDoubt && lane.suspect === inDoubt) lane.suspect = undefined;
    };
    while (failure === undefined && !this.stopped) {
      // A suspect goes alone, so a refusal is pinned on the right unit.
      const window = lane.suspect !== undefined ? 1 : this.opts.maxInflight;
      // Refill the window in chunks, not one read per acknowledgement.
      if (inflight.size > 0 && (exhausted || inflight.size > window / 2)) {
        await oneSettles();
        continue;
      }
      if (exhausted) break;
      const want = window - inflight.size;
      let due: Due;
      if (planned) {
        // What the pump already planned goes first, without planning it again.
        due = { units: planned.slice(0, want) };
        planned = undefined;
      } else {
        // Told to read from the oldest row: what is in flight settles first, then the pump reads again.
        if (this.rewound(lane)) {
          exhausted = true;
          continue;
        }
        due = await this.dueUnits(lane, sim, want);
        if (due.units.length < want && due.waitMs === undefined) exhausted = true;
      }
      if (due.units.length === 0) {
        if (inflight.size === 0) {
          if (due.waitMs !== undefined) wakeAt = Date.now() + due.waitMs;
          break;
        }
        await oneSettles();
        continue;
      }
      for (const unit of due.units) {
        const first = unit.rows[0]!.id;
        const inDoubt = lane.suspect;
        lane.cursor = unit.rows.at(-1)!.id;
        // Settled: the publish is out of the window (after its rows' removal, when that answers later).
        const done = () => {
          inflight.delete(first);
          settled?.();
          settled = undefined;
        };
        void session.publish(unit.topic, unit.payload, unit.qos).then(
          () => {
            unacked.delete(first);
            // Rows leave the outbox only now, on the PUBACK of the publish that carried them.
            const removed = this.opts.outbox.remove(unit.rows);
            if (!isPromise(removed)) {
              try {
                return acked(unit, inDoubt);
              } finally {
                done();
              }
            }
            // A delete that fails leaves the rows queued: they are sent again (at-least-once).
            return removed.then(() => acked(unit, inDoubt), (err: unknown) => void (failure ??= err)).finally(done);
          },
          (err: unknown) => {
            try {
              metrics.upstreamPublishes.inc({ group: sim.group, result: 'failed' });
              if (failure === undefined) {
                failure = err ?? new Error('publish failed');
                // The session goes now, not once the rest has settled: a later publish still queued in it
                // (aws-crt resends its queue after a reconnect) would otherwise arrive before this one's resend.
                void this.opts.pool.discard(session).catch(() => undefined);
                // IoT Core closed the connection to refuse a subscription: no message is to blame.
                if ((err as { subscriptionRefused?: boolean })?.subscriptionRefused) return;
                const oldest = Math.min(...unacked);
                const again = lane.suspect?.first === oldest ? lane.suspect : undefined;
                lane.suspect = { first: oldest, failures: again?.failures ?? 0, uncounted: true, error: String((err as Error)?.message ?? err) };
              }
            } finally {
              done();
            }
          },
        );
        inflight.add(first);
        unacked.add(first);
      }
      if (inflight.size >= window) await oneSettles();
    }
    while (inflight.size > 0) await oneSettles();
    if (failure !== undefined) throw failure;
    return wakeAt;
  }

  private count(sim: Sim, unit: Unit): void {
    const { metrics } = this.opts;
    metrics.upstreamPublishes.inc({ group: sim.group, result: 'ok' });
    // IoT Core bills messages in 5 KB units of payload and topic; Basic Ingest has no messaging charge.
    if (!unit.topic.startsWith('$aws/rules/')) metrics.billedUnits.inc({ group: sim.group }, Math.ceil((unit.payload.length + Buffer.byteLength(unit.topic)) / BILLING_UNIT));
    metrics.batchSize.observe({ group: sim.group }, unit.rows.length);
  }
}

/**
 * A plan's input, written out field by field. Node 20's V8 gives an object spread followed by new
 * fields a hidden class of its own every time: one per plan, never reused, in the path of every message.
 */
function planInput(basis: PlanBasis, rows: OutboxMessage[], open: OpenBatch | undefined, more: boolean, releaseBefore: number): PlanInput {
  const { cfg, topics, identity, batchTopic, maxMessageBytes } = basis;
  return { rows, open, more, cfg, topics, identity, batchTopic, maxMessageBytes, now: Date.now(), releaseBefore };
}

function isPromise<T>(value: MaybePromise<T>): value is Promise<T> {
  return typeof (value as Promise<T> | undefined)?.then === 'function';
}
