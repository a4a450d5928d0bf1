import type { Logger } from 'pino';
import type { Metrics } from '../../bridge/metrics.ts';
import { UpstreamPool, type PoolOptions } from '../../bridge/upstream/session-pool.ts';
import { FakeUpstreamLink } from './fake-upstream.ts';

/**
 * The real session pool over a stand-in upstream link, for in-process tests of what sits above it
 * (dispatcher, downlink): quotas high enough never to pace a test, unless `overrides` says otherwise.
 */
export function fakeUpstreamPool(deps: { metrics: Metrics; log: Logger }, overrides: Partial<PoolOptions> = {}): { pool: UpstreamPool; link: FakeUpstreamLink } {
  const link = new FakeUpstreamLink();
  const pool = new UpstreamPool({
    endpoint: async () => 'iot.invalid',
    port: 8883,
    caPem: '',
    keepAliveSeconds: 30,
    connectTimeoutMs: 2000,
    operationTimeoutMs: 2000,
    maxSessions: 100,
    idleTimeoutMs: 60_000,
    connectsPerSecond: 10_000,
    minConnectIntervalMs: 0,
    publishesPerSecond: 100_000,
    publishBurst: 100_000,
    byteBurst: 1e9,
    bytesPerSecond: 1e9,
    maxSubscriptions: 50,
    client: 'node',
    threads: 1,
    link,
    ...deps,
    ...overrides,
  });
  return { pool, link };
}
