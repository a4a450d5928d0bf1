import type { Logger } from 'pino';
import type { Outbox, OutboxMessage } from '../storage/outbox.ts';
import type { Sim, SimStore } from '../storage/sims.ts';
import type { DeviceCredentials } from '../vending/vendor.ts';
import type { Metrics } from './metrics.ts';
import { DeviceTopics } from './topics.ts';
import type { UpstreamPool, UpstreamSession } from './upstream/session-pool.ts';

export interface DispatcherOptions {
  outbox: Outbox;
  sims: SimStore;
  /** Credentials of a SIM, vending it first when needed. */
  credentials(sim: Sim): Promise<DeviceCredentials>;
  pool: UpstreamPool;
  upstreamTopicTemplate(group: string): string;
  maxInflight: number;
  /** Failed deliveries of one message, each followed by a successful reconnect, before it is dead-lettered. */
  maxDeliveryAttempts: number;
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
  /** The oldest unacknowledged row when a publish failed: maybe refused for good, maybe an outage. */
  suspect?: number;
  suspectError?: string;
  /** The failure is counted against the suspect only once a reconnect succeeds (an outage is not its fault). */
  suspectUncounted?: boolean;
}

/**
 * Moves each SIM's outbox rows upstream on that SIM's own session, in order, with up to maxInflight
 * QoS 1 publishes outstanding. A row is deleted only after its PUBACK; after a failure the SIM's
 * remaining rows are resent from the oldest, so delivery is at-least-once and FIFO per device.
 * IoT Core closes the connection on a publish it refuses (MQTT 3.1.1); a message that keeps doing that
 * is sent alone, and after maxDeliveryAttempts goes to the dead letters so it cannot block its device.
 */
export class Dispatcher {
  private readonly active = new Map<string, { again: boolean; done: Promise<void> }>();
  private readonly attempts = new Map<number, number>();
  private readonly acked: number[] = [];
  private flushAckScheduled = false;
  private stopped = false;

  constructor(private readonly opts: DispatcherOptions) {
    opts.outbox.onCommitted((imsis) => imsis.forEach((imsi) => this.wake(imsi)));
  }

  /** Resumes delivery of everything left in the outbox (after a restart). */
  start(): void {
    for (const imsi of this.opts.outbox.simsWithMessages()) this.wake(imsi);
  }

  wake(imsi: string): void {
    if (this.stopped) return;
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

  /** Stops starting new publishes and waits (bounded) for those in flight. */
  async stop(graceMs: number): Promise<void> {
    this.stopped = true;
    const all = Promise.allSettled([...this.active.values()].map((s) => s.done));
    await Promise.race([all, new Promise((r) => setTimeout(r, graceMs).unref())]);
    this.flushAcks();
  }

  private async pump(imsi: string, state: { again: boolean }): Promise<void> {
    let delay = this.opts.retryDelayMs;
    const cursor: Cursor = { imsi, lastId: 0 };
    while (!this.stopped) {
      state.again = false;
      const sim = this.opts.sims.get(imsi);
      if (!sim) return;
      let session: UpstreamSession | undefined;
      try {
        const creds = await this.opts.credentials(sim);
        session = await this.opts.pool.session(creds);
        this.judgeSuspect(cursor);
        await this.drain(sim, session, cursor);
        delay = this.opts.retryDelayMs;
        if (!state.again) return;
      } catch (err) {
        // Resend whatever is left, from the oldest row (drain has already deleted what was acked).
        cursor.lastId = 0;
        if (this.stopped) return;
        this.opts.log.warn({ thing: sim.thingName, err: String((err as Error)?.message ?? err) }, 'upstream delivery failed; will retry');
        if (session) await this.opts.pool.discard(session);
        await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random() / 2)).unref());
        delay = Math.min(delay * 2, this.opts.retryMaxDelayMs);
      }
    }
  }

  /** After a reconnect: count the failure against the suspect row, and dead-letter it past the limit. */
  private judgeSuspect(cursor: Cursor): void {
    if (cursor.suspect === undefined || !cursor.suspectUncounted) return;
    cursor.suspectUncounted = false;
    const n = (this.attempts.get(cursor.suspect) ?? 0) + 1;
    this.attempts.set(cursor.suspect, n);
    if (n < this.opts.maxDeliveryAttempts) return;
    const [row] = this.opts.outbox.peek(cursor.imsi, cursor.suspect - 1, 1);
    if (row && row.id === cursor.suspect) {
      const reason = `refused upstream ${n} times (${cursor.suspectError ?? 'connection closed on publish'})`;
      this.opts.outbox.deadLetter(row, reason);
      this.opts.metrics.deadLetters.inc({ reason: 'refused_upstream' });
      this.opts.onDeadLetter?.(row, reason);
      this.opts.log.warn({ id: row.id, reason }, 'message moved to dead letters');
    }
    this.attempts.delete(cursor.suspect);
    cursor.suspect = undefined;
  }

  /** Publishes the SIM's rows until none are left; throws on the first failed publish. */
  private async drain(sim: Sim, session: UpstreamSession, cursor: Cursor): Promise<void> {
    const { outbox, metrics } = this.opts;
    const topics = new DeviceTopics(this.opts.upstreamTopicTemplate(sim.group), { thing: sim.thingName, imsi: sim.imsi, imei: sim.boundImei ?? '' });
    const inflight = new Map<number, Promise<void>>();
    let failure: unknown;
    while (failure === undefined && !this.stopped) {
      // A suspect goes alone, so a refusal is pinned on the right message.
      const window = cursor.suspect !== undefined ? 1 : this.opts.maxInflight;
      const rows = outbox.peek(sim.imsi, cursor.lastId, window - inflight.size);
      if (rows.length === 0) {
        if (inflight.size === 0) break;
        await Promise.race(inflight.values());
        continue;
      }
      for (const row of rows) {
        cursor.lastId = row.id;
        const p: Promise<void> = session
          .publish(topics.toUpstream(row.deviceTopic), row.payload, row.qos)
          .then(
            () => {
              metrics.upstreamPublishes.inc({ result: 'ok' });
              this.ack(row.id);
              if (cursor.suspect === row.id) {
                cursor.suspect = undefined;
                this.attempts.delete(row.id);
              }
            },
            (err: unknown) => {
              metrics.upstreamPublishes.inc({ result: 'failed' });
              if (failure === undefined) {
                failure = err ?? new Error('publish failed');
                cursor.suspect = Math.min(...inflight.keys());
                cursor.suspectError = String((err as Error)?.message ?? err);
                cursor.suspectUncounted = true;
              }
            },
          )
          .finally(() => inflight.delete(row.id));
        inflight.set(row.id, p);
      }
      if (inflight.size >= window) await Promise.race(inflight.values());
    }
    await Promise.allSettled(inflight.values());
    // Delete what was acked before anyone peeks again, or it would be sent twice.
    this.flushAcks();
    if (failure !== undefined) throw failure;
  }

  /** Deletes acknowledged rows in one transaction per event-loop turn. */
  private ack(id: number): void {
    this.acked.push(id);
    if (!this.flushAckScheduled) {
      this.flushAckScheduled = true;
      setImmediate(() => this.flushAcks());
    }
  }

  private flushAcks(): void {
    this.flushAckScheduled = false;
    const ids = this.acked.splice(0);
    try {
      this.opts.outbox.remove(ids);
    } catch (err) {
      // The rows stay and will be sent again: a duplicate, never a loss.
      this.opts.log.error({ err: String(err) }, 'could not delete delivered rows');
    }
  }
}
