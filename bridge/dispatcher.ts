import type { Logger } from 'pino';
import type { GroupConfig } from '../config/schema.ts';
import type { Outbox, OutboxMessage } from '../storage/outbox.ts';
import type { Sim, SimStore } from '../storage/sims.ts';
import type { DeviceCredentials } from '../vending/vendor.ts';
import { plan, type OpenBatch, type PlanInput, type Unit } from './batching/planner.ts';
import type { Metrics } from './metrics.ts';
import { DeviceTopics } from './topics.ts';
import type { UpstreamPool, UpstreamSession } from './upstream/session-pool.ts';

export interface DispatcherOptions {
  outbox: Outbox;
  sims: SimStore;
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

/** Where one SIM's delivery stands between drains. */
interface Cursor {
  imsi: string;
  /** Rows up to here are acknowledged or in flight; their deletes may still be pending. */
  lastId: number;
  /** The first row of the oldest unacknowledged unit when a publish failed: refused for good, or an outage? */
  suspect?: number;
  suspectError?: string;
  /** The failure is counted against the suspect only once a reconnect succeeds (an outage is not its fault). */
  suspectUncounted?: boolean;
  /** When the device's open batch is due. */
  wakeAt?: number;
}

/** A device's open window batch and what it was planned from; reused only while all of that still holds. */
interface KnownOpenBatch extends OpenBatch {
  plannedWith: Omit<PlanInput, 'rows' | 'open' | 'more' | 'now' | 'releaseBefore'>;
  afterId: number;
  /** Last row read into it: the next plan reads only rows after this one. */
  lastRowId: number;
  group: string;
  removals: number;
}

/** What joining rows to an open batch planned when that made it due: its units, and what stays open. */
interface DuePlan {
  /** The open batch the rows joined (its plan inputs, read position and removal count). */
  from: KnownOpenBatch;
  units: Unit[];
  open?: OpenBatch;
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
 */
export class Dispatcher {
  private readonly active = new Map<string, { again: boolean; done: Promise<void> }>();
  private readonly attempts = new Map<number, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  /** Open window batches: a reading joining one costs a read of that reading, not of the whole batch. */
  private readonly openBatches = new Map<string, KnownOpenBatch>();
  /** A batch that joining rows made due, handed to the wake that follows so it is not read and planned again. */
  private readonly duePlans = new Map<string, DuePlan>();
  /** Where a SIM's last pump stopped with everything up to there acknowledged: the next one reads on from there. */
  private readonly resumeAfter = new Map<string, number>();
  /** Per group: rows received up to this time are due now (a schedule fired). */
  private readonly released = new Map<string, number>();
  /** While flushing (shutdown), every open batch is due. */
  private flushing = false;
  private stopped = false;

  constructor(private readonly opts: DispatcherOptions) {
    opts.outbox.onCommitted((committed) => committed.forEach((rows, imsi) => this.joinOpenBatch(imsi, rows) || this.openBatch(imsi, rows) || this.wake(imsi)));
  }

  /** Resumes delivery of everything left in the outbox (after a restart). */
  start(): void {
    for (const imsi of this.opts.outbox.simsWithMessages()) this.wake(imsi);
  }

  /** A group's schedule fired: what its devices hold now is due. */
  release(group: string, at = Date.now()): void {
    this.released.set(group, at);
    for (const imsi of this.opts.outbox.simsWithMessages()) {
      if (this.opts.sims.get(imsi)?.group === group) this.wake(imsi);
    }
  }

  wake(imsi: string): void {
    if (this.stopped) return;
    clearTimeout(this.timers.get(imsi));
    this.timers.delete(imsi);
    const running = this.active.get(imsi);
    if (running) {
      running.again = true;
      return;
    }
    const state = { again: false, done: Promise.resolve() };
    state.done = this.pump(imsi, state).finally(() => {
      this.active.delete(imsi);
      if (state.again && !this.stopped) this.wake(imsi);
    });
    this.active.set(imsi, state);
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
    this.timers.forEach((t) => clearTimeout(t));
    this.timers.clear();
    const all = Promise.allSettled([...this.active.values()].map((s) => s.done));
    await Promise.race([all, new Promise((r) => setTimeout(r, graceMs).unref())]);
  }

  private async pump(imsi: string, state: { again: boolean }): Promise<void> {
    let delay = this.opts.retryDelayMs;
    // A batch kept open is continued only by a pump that reads on from where it was planned.
    const cursor: Cursor = { imsi, lastId: this.resumeAfter.get(imsi) ?? 0 };
    this.resumeAfter.delete(imsi);
    while (!this.stopped) {
      state.again = false;
      const sim = this.opts.sims.forRouting(imsi);
      if (!sim) return;
      // An open batch (window, schedule) needs no session yet: a sleepy fleet's first readings would
      // otherwise open every device's session at once, long before anything is due.
      const next = this.nextUnits(sim, cursor.lastId, 1);
      if (next.units.length === 0) {
        cursor.wakeAt = next.waitMs === undefined ? undefined : Date.now() + next.waitMs;
        if (state.again) continue;
        break;
      }
      let session: UpstreamSession | undefined;
      try {
        // A warm session already holds the credentials: read and decrypt the key only to open one.
        const warm = this.opts.pool.peek(sim.thingName);
        session = warm && !warm.isClosed ? warm : await this.opts.pool.session(await this.opts.credentials(sim));
        // A suspect from an earlier failure may be dead-lettered now, which changes what is due.
        const planned = cursor.suspect === undefined ? next.units : undefined;
        this.judgeSuspect(cursor, this.opts.changedRecently?.(sim, session.creds.issuedAt) ?? false);
        await this.drain(sim, session, cursor, planned);
        delay = this.opts.retryDelayMs;
        // Rows left beyond what drain read (a long backlog read in chunks) keep the pump going.
        const more = cursor.wakeAt === undefined && this.opts.outbox.peek(imsi, cursor.lastId, 1).length > 0;
        if (!state.again && !more) break;
      } catch (err) {
        // Resend whatever is left, from the oldest row (what was acked is already marked delivered).
        cursor.lastId = 0;
        if (this.stopped) return;
        if ((err as Error)?.name === 'VendingRefusedError') {
          // No certificate will ever come for this SIM (terminated, revoked): its queue cannot be delivered.
          this.deadLetterAll(imsi, `not delivered: ${(err as Error).message}`);
          return;
        }
        this.opts.log.warn({ thing: sim.thingName, err: String((err as Error)?.message ?? err) }, 'upstream delivery failed; will retry');
        if (session) await this.opts.pool.discard(session);
        await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random() / 2)).unref());
        delay = Math.min(delay * 2, this.opts.retryMaxDelayMs);
      }
    }
    if (this.stopped) return;
    this.resumeAfter.set(imsi, cursor.lastId);
    if (cursor.wakeAt !== undefined) {
      this.timers.set(imsi, setTimeout(() => this.wake(imsi), Math.max(0, cursor.wakeAt - Date.now())));
    }
  }

  /** After a reconnect: count the failure against the suspect unit, and dead-letter it past the limit. */
  private judgeSuspect(cursor: Cursor, changedRecently: boolean): void {
    if (cursor.suspect === undefined || !cursor.suspectUncounted) return;
    cursor.suspectUncounted = false;
    if (changedRecently) return;
    const n = (this.attempts.get(cursor.suspect) ?? 0) + 1;
    this.attempts.set(cursor.suspect, n);
    if (n < this.opts.maxDeliveryAttempts) return;
    const sim = this.opts.sims.get(cursor.imsi);
    const unit = sim && this.nextUnits(sim, cursor.suspect - 1, 1, true).units[0];
    const reason = `refused upstream ${n} times (${cursor.suspectError ?? 'connection closed on publish'})`;
    for (const row of unit?.rows ?? []) {
      this.opts.outbox.deadLetter(row, reason);
      this.opts.metrics.deadLetters.inc({ reason: 'refused_upstream' });
      this.opts.onDeadLetter?.(row, reason);
    }
    this.opts.log.warn({ imsi: cursor.imsi, rows: unit?.rows.length ?? 0, reason }, 'moved to dead letters');
    this.attempts.delete(cursor.suspect);
    cursor.suspect = undefined;
  }

  private deadLetterAll(imsi: string, reason: string): void {
    for (let rows = this.opts.outbox.peek(imsi, 0, 500); rows.length; rows = this.opts.outbox.peek(imsi, 0, 500)) {
      for (const row of rows) {
        this.opts.outbox.deadLetter(row, reason);
        this.opts.metrics.deadLetters.inc({ reason: 'sim_refused' });
        this.opts.onDeadLetter?.(row, reason);
      }
    }
  }

  /** The next units of a SIM after a row id, by its group's policy. */
  private nextUnits(sim: Sim, afterId: number, maxUnits: number, forceDue = false, given?: OutboxMessage[]): { units: Unit[]; waitMs?: number } {
    const group = this.opts.group(sim.group);
    const cfg = group.batching;
    const stillHolds = (k: KnownOpenBatch | undefined): k is KnownOpenBatch =>
      !!k &&
      k.afterId === afterId &&
      k.plannedWith.cfg === cfg &&
      k.plannedWith.identity.imei === sim.boundImei &&
      k.plannedWith.identity.thing === sim.thingName &&
      k.removals === this.opts.outbox.removals(sim.imsi);
    const due = this.duePlans.get(sim.imsi);
    this.duePlans.delete(sim.imsi);
    if (due && !given && !forceDue && !this.flushing && due.units.length <= maxUnits && stillHolds(due.from)) {
      this.openBatches.delete(sim.imsi);
      this.keepOpen(sim, due.from.plannedWith, due.open, due.units.at(-1)!.rows.at(-1)!.id);
      return { units: due.units, waitMs: due.waitMs };
    }
    const known = this.openBatches.get(sim.imsi);
    this.openBatches.delete(sim.imsi);
    const open = stillHolds(known) ? known : undefined;
    const limit = cfg.policy === 'immediate' ? maxUnits : Math.min(MAX_PEEK, (cfg.maxMessages + 1) * maxUnits);
    const rows = given ?? this.opts.outbox.peek(sim.imsi, open ? open.lastRowId : afterId, limit + 1);
    const more = rows.length > limit;
    if (more) rows.pop();
    const vars = { thing: sim.thingName, imsi: sim.imsi, imei: sim.boundImei ?? '' };
    const releaseBefore = forceDue || this.flushing ? Infinity : (this.released.get(sim.group) ?? -Infinity);
    const plannedWith = open?.plannedWith ?? {
      cfg,
      topics: new DeviceTopics(group.upstreamTopic, vars),
      identity: { imsi: sim.imsi, imei: sim.boundImei, thing: sim.thingName },
      batchTopic: cfg.topic.replace(/\{(thing|imsi|imei)\}/g, (_m, k: keyof typeof vars) => vars[k]),
      maxMessageBytes: this.opts.maxMessageBytes,
    };
    const planned = plan({ ...plannedWith, rows, open, more, now: Date.now(), releaseBefore });
    const units = planned.units.slice(0, maxUnits);
    if (units.length === planned.units.length) {
      this.keepOpen(sim, plannedWith, planned.open, units.at(-1)?.rows.at(-1)!.id ?? afterId);
    }
    return { units, waitMs: planned.waitMs };
  }

  /** Remembers the batch a plan left open after its units, so the next plan continues it. */
  private keepOpen(sim: Sim, plannedWith: KnownOpenBatch['plannedWith'], open: OpenBatch | undefined, unitsEnd: number): void {
    if (!open) return;
    const lastRowId = open.rows.at(-1)!.id;
    this.openBatches.set(sim.imsi, { ...open, plannedWith, afterId: unitsEnd, lastRowId, group: sim.group, removals: this.opts.outbox.removals(sim.imsi) });
  }

  /**
   * Newly committed rows of a SIM whose window batch is open and waiting: they join it here, without a
   * read or a pump, as long as it stays open. Returns false when the SIM needs a full wake instead
   * (no such batch, it changed, or it is now due); the wake then plans from the outbox.
   */
  private joinOpenBatch(imsi: string, rows: OutboxMessage[]): boolean {
    const known = this.openBatches.get(imsi);
    if (!known || this.active.has(imsi) || !this.timers.has(imsi) || this.stopped || this.flushing) return false;
    this.openBatches.delete(imsi);
    // The SIM itself (status, group, identity) is checked again by the wake that sends the batch.
    if (rows[0]!.id <= known.lastRowId || known.removals !== this.opts.outbox.removals(imsi) || known.plannedWith.cfg !== this.opts.group(known.group).batching) return false;
    const planned = plan({ ...known.plannedWith, rows, open: known, more: false, now: Date.now(), releaseBefore: this.released.get(known.group) ?? -Infinity });
    if (planned.units.length > 0) {
      // Now due: the wake that follows sends what was planned here (checked again there) and keeps the rest open.
      this.duePlans.set(imsi, { from: known, units: planned.units, open: planned.open, waitMs: planned.waitMs });
      return false;
    }
    if (!planned.open) return false;
    // The planner extended the batch's own rows and builder: only the read position moves.
    known.lastRowId = rows.at(-1)!.id;
    this.openBatches.set(imsi, known);
    return true;
  }

  /**
   * The first rows of a SIM with nothing else queued: when they open a window batch that is not due,
   * the batch and its timer are set up here, without a read or a pump. Returns false otherwise.
   */
  private openBatch(imsi: string, rows: OutboxMessage[]): boolean {
    if (this.openBatches.has(imsi) || this.active.has(imsi) || this.timers.has(imsi) || this.stopped || this.flushing) return false;
    // Older rows (queued, or delivered and not yet deleted) mean the pump must plan from the outbox.
    if (this.opts.outbox.usage(imsi).rows !== rows.length) return false;
    const sim = this.opts.sims.forRouting(imsi);
    if (!sim || this.opts.group(sim.group).batching.policy !== 'window') return false;
    const { units, waitMs } = this.nextUnits(sim, this.resumeAfter.get(imsi) ?? 0, 1, false, rows);
    if (units.length > 0 || waitMs === undefined) {
      this.openBatches.delete(imsi);
      return false;
    }
    this.timers.set(imsi, setTimeout(() => this.wake(imsi), waitMs));
    return true;
  }

  /** Publishes the SIM's due units until none are left; throws on the first failed publish. */
  private async drain(sim: Sim, session: UpstreamSession, cursor: Cursor, planned?: Unit[]): Promise<void> {
    const { metrics } = this.opts;
    const inflight = new Map<number, Promise<void>>();
    let failure: unknown;
    cursor.wakeAt = undefined;
    // After a read that found the queue empty, read again only once this drain is done: rows committed
    // meanwhile wake the pump, which drains again (a read per acknowledgement found nothing 9 times in 10).
    let exhausted = false;
    while (failure === undefined && !this.stopped) {
      // A suspect goes alone, so a refusal is pinned on the right unit.
      const window = cursor.suspect !== undefined ? 1 : this.opts.maxInflight;
      // Refill the window in chunks, not one read per acknowledgement.
      if (inflight.size > 0 && (exhausted || inflight.size > window / 2)) {
        await Promise.race(inflight.values());
        continue;
      }
      if (exhausted) break;
      const want = window - inflight.size;
      let units: Unit[];
      let waitMs: number | undefined;
      if (planned) {
        // What the pump already planned goes first, without planning it again.
        units = planned.slice(0, want);
        planned = undefined;
      } else {
        ({ units, waitMs } = this.nextUnits(sim, cursor.lastId, want));
        if (units.length < want && waitMs === undefined) exhausted = true;
      }
      if (units.length === 0) {
        if (inflight.size === 0) {
          if (waitMs !== undefined) cursor.wakeAt = Date.now() + waitMs;
          break;
        }
        await Promise.race(inflight.values());
        continue;
      }
      for (const unit of units) {
        const first = unit.rows[0]!.id;
        cursor.lastId = unit.rows.at(-1)!.id;
        const p: Promise<void> = session
          .publish(unit.topic, unit.payload, unit.qos)
          .then(
            () => {
              this.count(sim, unit);
              this.opts.outbox.remove(unit.rows);
              if (cursor.suspect === first) {
                cursor.suspect = undefined;
                this.attempts.delete(first);
              }
            },
            (err: unknown) => {
              metrics.upstreamPublishes.inc({ group: sim.group, result: 'failed' });
              if (failure === undefined) {
                failure = err ?? new Error('publish failed');
                // IoT Core closed the connection to refuse a subscription: no message is to blame.
                if ((err as { subscriptionRefused?: boolean })?.subscriptionRefused) return;
                cursor.suspect = Math.min(...inflight.keys());
                cursor.suspectError = String((err as Error)?.message ?? err);
                cursor.suspectUncounted = true;
              }
            },
          )
          .finally(() => inflight.delete(first));
        inflight.set(first, p);
      }
      if (inflight.size >= window) await Promise.race(inflight.values());
    }
    await Promise.allSettled(inflight.values());
    if (failure !== undefined) throw failure;
  }

  private count(sim: Sim, unit: Unit): void {
    const { metrics } = this.opts;
    metrics.upstreamPublishes.inc({ group: sim.group, result: 'ok' });
    // IoT Core bills messages in 5 KB units of payload and topic.
    metrics.billedUnits.inc({ group: sim.group }, Math.ceil((unit.payload.length + Buffer.byteLength(unit.topic)) / BILLING_UNIT));
    metrics.batchSize.observe({ group: sim.group }, unit.rows.length);
  }
}
