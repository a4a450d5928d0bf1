import { Counter, Gauge, type Registry } from 'prom-client';

/** The lifecycle events' own figures, on the gateway's registry. */
export function eventMetrics(registry: Registry, queued: () => Promise<number>) {
  return {
    published: new Counter({
      name: 'simbridge_events_published_total',
      help: 'lifecycle events IoT Core acknowledged, by kind',
      labelNames: ['kind'] as const,
      registers: [registry],
    }),
    failures: new Counter({
      name: 'simbridge_events_publish_failures_total',
      help: 'attempts to publish the queued lifecycle events that failed (they are retried)',
      registers: [registry],
    }),
    queued: new Gauge({
      name: 'simbridge_events_queued',
      help: 'lifecycle events committed and not yet acknowledged by IoT Core',
      registers: [registry],
      async collect() {
        this.set(await queued());
      },
    }),
  };
}

export type EventMetrics = ReturnType<typeof eventMetrics>;
