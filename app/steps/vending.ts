import type { Logger } from 'pino';
import type { Metrics } from '../../bridge/metrics.ts';
import type { Stores } from '../../storage/index.ts';
import type { Sim } from '../../storage/sims.ts';
import { createVending } from '../../vending/index.ts';
import type { KeyCipher } from '../../vending/key-cipher.ts';
import { groupPolicy } from '../../vending/policy.ts';
import type { Vendor } from '../../vending/vendor.ts';
import type { Live } from './live.ts';

export interface VendingParts {
  vendor: Vendor;
  /** The cached, paced DescribeEndpoint of IoT Core's control plane. */
  provider: { dataEndpoint(signal?: AbortSignal): Promise<string> };
  /** True while IoT Core may still be propagating the SIM's new certificate or its group's new policy. */
  changedRecently(sim: Sim, certificateIssuedAt: number | undefined): boolean;
}

/** The certificate vendor, reporting to the metrics; it remembers when each group policy last changed. */
export function startVending(live: Live, deps: { stores: Stores; cipher: KeyCipher; metrics: Metrics; log: Logger }): VendingParts {
  const { metrics } = deps;
  // When each group policy last got a new version: IoT Core applies it minutes later.
  const policyUpdatedAt = new Map<string, number>();
  let lastPolicyUpdate = 0;
  const { vendor, provider } = createVending(live.config.vending, {
    sims: deps.stores.sims,
    credentials: deps.stores.credentials,
    cipher: deps.cipher,
    audit: deps.stores.audit,
    log: deps.log.child({ component: 'vending' }),
    policyFor: (g) => groupPolicy(live.config, g),
    onVended: (s) => (metrics.vends.inc({ result: 'ok' }), metrics.vendSeconds.observe(s)),
    onFailure: () => metrics.vends.inc({ result: 'failed' }),
    onQueueDepth: (d) => metrics.vendQueueDepth.set(d),
    onPolicyUpdated: (name) => policyUpdatedAt.set(name, (lastPolicyUpdate = Date.now())),
    needsDataEndpoint: !live.config.upstream.endpoint,
  });
  const changedRecently = (sim: Sim, issuedAt: number | undefined) => {
    // Within the grace: anything after this time.
    const since = Date.now() - live.config.upstream.propagationGraceMs;
    // Asked before every delivery: the group's policy (a document built from config) is looked up only
    // while some policy update is recent at all.
    return (issuedAt ?? 0) > since || (lastPolicyUpdate > since && (policyUpdatedAt.get(groupPolicy(live.config, sim.group).name) ?? 0) > since);
  };
  return { vendor, provider, changedRecently };
}
