import type { Logger } from 'pino';
import { maskIdentifiers } from '../../admin/mask.ts';
import { eventMetrics } from '../../bridge/events/metrics.ts';
import { EventPublisher } from '../../bridge/events/publisher.ts';
import type { Metrics } from '../../bridge/metrics.ts';
import { eventRenderer } from '../../bridge/events/render.ts';
import type { Db } from '../../storage/db.ts';
import { sqliteEventStream } from '../../storage/events.ts';
import type { Stores } from '../../storage/index.ts';
import type { PostgresGatewayParts } from '../../storage/postgres/gateway.ts';
import { GatewayIdentity } from '../../vending/gateway-identity.ts';
import { createProvider } from '../../vending/index.ts';
import type { KeyCipher } from '../../vending/key-cipher.ts';
import { fillName } from '../../vending/policy.ts';
import type { Live } from './live.ts';
import type { UpstreamParts } from './upstream.ts';
import type { VendingParts } from './vending.ts';

export interface EventParts {
  publisher: EventPublisher;
  stop(): Promise<void>;
}

/**
 * Fleet lifecycle events (docs/events.md), when `events.enabled`: what the stores record becomes an
 * outbox row in the same commit (storage/events.ts), published as the gateway's own thing. Runs before
 * the listeners open, so no occurrence escapes the tap.
 */
export function startEvents(
  live: Live,
  deps: { db?: Db; postgres?: PostgresGatewayParts; stores: Stores; cipher: KeyCipher; vending: VendingParts; upstream: UpstreamParts; metrics: Metrics; log: Logger },
): EventParts | undefined {
  const { events, vending, upstream } = live.config;
  if (!events.enabled) return undefined;
  const gateway = events.gateway;
  const thingName = fillName(events.thingName, { gateway });
  const provider = createProvider(vending);
  const identity = new GatewayIdentity({
    gateway,
    thingName,
    policyName: fillName(events.policyName, { gateway }),
    eventTopicRoot: `${events.topicPrefix}/${gateway}/events`,
    keyAlgorithm: vending.keyAlgorithm,
    store: deps.stores.gatewayCredentials,
    cipher: deps.cipher,
    provider,
    call: (api, fn) => deps.vending.vendor.callApi(api, fn),
    log: deps.log.child({ component: 'events' }),
  });
  // Several nodes on PostgreSQL: the one holding the events' lease publishes every node's (docs/cluster.md).
  const stream = deps.postgres?.events ?? sqliteEventStream(deps.db!);
  const { queue } = stream;
  const publisher = new EventPublisher({
    queue,
    credentials: () => identity.ensure(),
    pool: deps.upstream.pool,
    maxInflight: upstream.maxInflight,
    retryDelayMs: events.retryDelayMs,
    topicRoot: `${events.topicPrefix}/${gateway}/events/`,
    metrics: eventMetrics(deps.metrics.registry, () => queue.count()),
    log: deps.log.child({ component: 'events' }),
  });
  const untap = stream.tap(
    eventRenderer({
      // The gateway's name, topics and policy are fixed at start (events.* needs a restart).
      settings: () => events,
      mask: (v) => (live.config.privacy.maskIdentifiers ? maskIdentifiers(v) : v),
    }),
    {
      queued: () => publisher.wake(),
      // Another node publishes from now on: the gateway's thing is one client id, so this node's session goes.
      lost: () => void deps.upstream.pool.drop(thingName).catch(() => undefined),
    },
  );
  // Events left from before a restart go first.
  publisher.wake();
  return {
    publisher,
    stop: async () => {
      untap();
      await publisher.stop();
      provider.destroy?.();
    },
  };
}
