import type { Logger } from 'pino';
import type { Metrics } from '../../bridge/metrics.ts';
import { UpstreamHealth, watchControlPlane, type CheckState } from '../../bridge/upstream/health.ts';
import { UpstreamPool } from '../../bridge/upstream/session-pool.ts';
import { upstreamTrust } from '../../bridge/upstream/trust.ts';
import type { Live } from './live.ts';
import type { VendingParts } from './vending.ts';

export interface UpstreamParts {
  pool: UpstreamPool;
  health: UpstreamHealth;
}

/** The pool of per-device sessions to IoT Core, following the vendor's rotations and revocations. */
export function startUpstream(live: Live, deps: { vending: VendingParts; metrics: Metrics; log: Logger }): UpstreamParts {
  const { vendor } = deps.vending;
  const { upstream, limits } = live.config;
  const health = new UpstreamHealth();
  const pool = new UpstreamPool({
    endpoint: async () => live.config.upstream.endpoint ?? (await vendor.dataEndpoint()),
    onConnect: (ok, detail) => health.record('upstream', ok, detail),
    port: upstream.port,
    caPem: upstreamTrust(upstream.caFile),
    keepAliveSeconds: upstream.keepAliveSeconds,
    connectTimeoutMs: upstream.connectTimeoutMs,
    operationTimeoutMs: upstream.operationTimeoutMs,
    maxSessions: upstream.maxSessions,
    idleTimeoutMs: upstream.idleTimeoutMs,
    connectsPerSecond: upstream.connectsPerSecond,
    minConnectIntervalMs: upstream.minConnectIntervalMs,
    publishesPerSecond: upstream.publishesPerSecond,
    bytesPerSecond: upstream.bytesPerSecond,
    publishBurst: upstream.publishBurst,
    // The largest message (payload and topic) must fit in one burst.
    byteBurst: limits.maxPayloadBytes + limits.maxTopicBytes,
    maxSubscriptions: upstream.maxSubscriptions,
    client: upstream.client,
    threads: upstream.threads,
    metrics: deps.metrics,
    log: deps.log.child({ component: 'upstream' }),
  });
  // A rotated certificate: the session moves to it, then the vendor retires the old one.
  vendor.onRotated((ev) => pool.replace(ev.credentials, live.config.vending.rotation.retireAfterMs));
  // A revoked certificate: its session goes at once (IoT Core would drop it too).
  vendor.onRevoked((ev) => pool.drop(ev.thingName));
  return { pool, health };
}

/**
 * Asks IoT Core's control plane at start, so that an operator learns now, not at the first device, that
 * AWS cannot be reached; keeps asking while it fails. `warning`: what the banner says, if anything.
 */
export async function checkControlPlane(live: Live, upstream: UpstreamParts, vending: VendingParts): Promise<{ stop(): void; warning?: string }> {
  const { startupCheckMs, healthRetryMs } = live.config.upstream;
  const watch = watchControlPlane({ health: upstream.health, dataEndpoint: (signal) => vending.provider.dataEndpoint(signal), waitMs: startupCheckMs, retryMs: healthRetryMs });
  return { stop: () => watch.stop(), warning: controlPlaneWarning(await watch.first, startupCheckMs) };
}

function controlPlaneWarning(atStart: CheckState | undefined, waitMs: number): string | undefined {
  if (atStart === undefined) return `IoT Core's control plane has not answered DescribeEndpoint within ${waitMs} ms: no device can be vended until it does`;
  return atStart.ok ? undefined : `${atStart.detail}: no device can be vended or delivered until this is fixed (simbridge doctor tells why)`;
}
