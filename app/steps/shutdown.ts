import type { AdminServer } from '../../admin/index.ts';
import type { BatchSchedules } from '../../bridge/batching/schedules.ts';
import type { GatewayOutbox } from '../../storage/index.ts';
import type { DeliveryParts } from './delivery.ts';
import type { EventParts } from './events.ts';
import type { IngressParts } from './ingress.ts';
import type { Live } from './live.ts';
import type { UpstreamParts } from './upstream.ts';
import type { VendingParts } from './vending.ts';

interface ShutdownDeps {
  closeDatabase(): Promise<void>;
  outbox: GatewayOutbox;
  vending: VendingParts;
  upstream: UpstreamParts;
  delivery: DeliveryParts;
  ingress: IngressParts;
  schedules: BatchSchedules;
  admin?: AdminServer;
  controlPlane: { stop(): void };
  events?: EventParts;
}

/**
 * Stops accepting, sends open batches (bounded), finishes in-flight commits, closes sessions and the
 * database; the order matters. Called twice, it returns the same promise.
 */
export function shutdown(live: Live, deps: ShutdownDeps): () => Promise<void> {
  let closing: Promise<void> | undefined;
  const { dispatcher, downlink, jobs } = deps.delivery;
  return () => {
    closing ??= (async () => {
      deps.controlPlane.stop();
      await Promise.all([deps.ingress.close(), deps.admin?.close()]);
      downlink.close();
      jobs.close();
      deps.schedules.stop();
      await deps.outbox.settle();
      await dispatcher.flush(live.config.shutdown.flushDeadlineMs);
      deps.vending.vendor.stop();
      await dispatcher.stop(live.config.shutdown.graceMs);
      // Events not yet sent stay queued for the next start.
      await deps.events?.stop();
      // Upstream first: aws-crt (upstream.client) must let go of its callbacks before any thread of this process stops.
      await deps.upstream.pool.closeAll();
      await deps.outbox.close();
      await deps.closeDatabase();
    })();
    return closing;
  };
}
