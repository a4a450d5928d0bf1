import type { Logger } from 'pino';
import type { Outbox, OutboxMessage } from '../storage/outbox.ts';
import type { Sim, SimStore } from '../storage/sims.ts';
import type { DeviceCredentials } from '../vending/vendor.ts';
import type { Metrics } from './metrics.ts';
import { mapTopic } from './topics.ts';
import type { UpstreamPool, UpstreamSession } from './upstream/session-pool.ts';

export interface DispatcherOptions {
  outbox: Outbox;
  sims: SimStore;
  /** Credentials of a SIM, vending it first when needed. */
  credentials(sim: Sim): Promise<DeviceCredentials>;
  pool: UpstreamPool;
  upstreamTopicTemplate(group: string): string;
  maxInflight: number;
  retryDelayMs: number;
  retryMaxDelayMs: number;
  metrics: Metrics;
  log: Logger;
}

/**
 * Moves each SIM's outbox rows upstream on that SIM's own session, in order, with up to maxInflight
 * QoS 1 publishes outstanding. A row is deleted only after its PUBACK; after a failure the SIM's
 * remaining rows are resent from the oldest, so delivery is at-least-once and FIFO per device.
 */
export class Dispatcher {
  private readonly active = new Map<string, { again: boolean; done: Promise<void> }>();
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
    // Rows up to the cursor are acknowledged or in flight; their deletes may still be pending.
    const cursor = { lastId: 0 };
    while (!this.stopped) {
      state.again = false;
      const sim = this.opts.sims.get(imsi);
      if (!sim) return;
      let session: UpstreamSession | undefined;
      try {
        const creds = await this.opts.credentials(sim);
        session = await this.opts.pool.session(creds);
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

  /** Publishes the SIM's rows until none are left; throws on the first failed publish. */
  private async drain(sim: Sim, session: UpstreamSession, cursor: { lastId: number }): Promise<void> {
    const { outbox, maxInflight, metrics } = this.opts;
    const template = this.opts.upstreamTopicTemplate(sim.group);
    const inflight = new Set<Promise<void>>();
    let failure: unknown;
    while (failure === undefined && !this.stopped) {
      const rows = outbox.peek(sim.imsi, cursor.lastId, maxInflight - inflight.size);
      if (rows.length === 0) {
        if (inflight.size === 0) break;
        await Promise.race(inflight);
        continue;
      }
      for (const row of rows) {
        cursor.lastId = row.id;
        const p: Promise<void> = session
          .publish(this.upstreamTopic(template, sim, row), row.payload, row.qos)
          .then(
            () => {
              metrics.upstreamPublishes.inc({ result: 'ok' });
              this.ack(row.id);
            },
            (err: unknown) => {
              metrics.upstreamPublishes.inc({ result: 'failed' });
              failure ??= err ?? new Error('publish failed');
            },
          )
          .finally(() => inflight.delete(p));
        inflight.add(p);
      }
      if (inflight.size >= maxInflight) await Promise.race(inflight);
    }
    await Promise.allSettled(inflight);
    // Delete what was acked before anyone peeks again, or it would be sent twice.
    this.flushAcks();
    if (failure !== undefined) throw failure;
  }

  private upstreamTopic(template: string, sim: Sim, row: OutboxMessage): string {
    return mapTopic(template, { thing: sim.thingName, imsi: sim.imsi, imei: sim.boundImei ?? '', topic: row.deviceTopic });
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
