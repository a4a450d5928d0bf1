import type { Logger } from 'pino';
import type { EventQueue } from '../../storage/events.ts';
import type { DeviceCredentials } from '../../vending/vendor.ts';
import type { UpstreamPool } from '../upstream/session-pool.ts';
import type { EventMetrics } from './metrics.ts';

export interface EventPublisherOptions {
  queue: EventQueue;
  /** The gateway's own credentials, vended on first use (vending/gateway-identity.ts). */
  credentials(): Promise<DeviceCredentials>;
  pool: UpstreamPool;
  /** Publishes in flight at once (IoT Core: 100 in-flight QoS 1 per connection). */
  maxInflight: number;
  retryDelayMs: number;
  metrics?: Pick<EventMetrics, 'published' | 'failures'>;
  /** `{topicPrefix}/{gateway}/events/`: the only topics the gateway's policy lets it publish on. */
  topicRoot?: string;
  log: Logger;
}

const MAX_RETRY_DELAY_MS = 60_000;

/**
 * Delivers the gateway's queued events on its own upstream session, oldest first, QoS 1; a row leaves
 * the outbox only on its PUBACK, so what a crash interrupts is sent again after the restart
 * (at-least-once: consumers drop repeats by eventId). One drain runs at a time.
 */
export class EventPublisher {
  private draining: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private warnedForeign = false;

  constructor(private readonly o: EventPublisherOptions) {}

  /** New events were committed (or the gateway started): send what is queued. */
  wake(): void {
    if (this.stopped) return;
    if (this.draining) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.draining = this.drainLoop().finally(() => {
      this.draining = undefined;
      if (this.again) (this.again = false), this.wake();
    });
  }

  /** Stops sending (shutdown); what is queued stays for the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.draining;
  }

  private async drainLoop(): Promise<void> {
    let delay = this.o.retryDelayMs;
    while (!this.stopped) {
      try {
        if (!(await this.drainOnce())) return;
        delay = this.o.retryDelayMs;
      } catch (err) {
        if (this.stopped) return;
        this.o.metrics?.failures.inc();
        this.o.log.warn({ err: String((err as Error)?.message ?? err) }, 'gateway events not published; will retry');
        await new Promise((r) => (this.timer = setTimeout(r, delay * (0.5 + Math.random() / 2))));
        delay = Math.min(delay * 2, MAX_RETRY_DELAY_MS);
      }
    }
  }

  /** Sends one window of queued events; false when none were queued. */
  private async drainOnce(): Promise<boolean> {
    const rows = await this.o.queue.peek(this.o.maxInflight);
    if (rows.length === 0) return false;
    const foreign = this.o.topicRoot && rows.find((r) => !r.topic.startsWith(this.o.topicRoot!));
    if (foreign && !this.warnedForeign) {
      // IoT Core will refuse it (and close the session) until the name is what it was when it was recorded.
      this.warnedForeign = true;
      this.o.log.error({ topic: foreign.topic, allowed: `${this.o.topicRoot}*` }, 'a queued event was recorded under another gateway name: events.gateway changed, or differs between the nodes on one database');
    }
    const session = await this.o.pool.session(await this.o.credentials());
    // One connection keeps QoS 1 publishes in order; each row goes once its own PUBACK is in.
    const results = await Promise.allSettled(rows.map(async (row) => {
      await session.publish(row.topic, row.payload, 1);
      await this.o.queue.remove(row.id);
      this.o.metrics?.published.inc({ kind: row.topic.slice(row.topic.lastIndexOf('/') + 1) });
    }));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      await this.o.pool.discard(session).catch(() => undefined);
      throw (failed as PromiseRejectedResult).reason;
    }
    return true;
  }
}
