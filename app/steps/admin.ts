import type { Logger } from 'pino';
import { startAdmin, type AdminServer } from '../../admin/index.ts';
import type { ClusterView } from '../../admin/types.ts';
import type { Metrics } from '../../bridge/metrics.ts';
import { describeFinding, identityFindings } from '../../config/identity.ts';
import { freeBytes } from '../../storage/files.ts';
import type { Stores } from '../../storage/index.ts';
import { fillName } from '../../vending/policy.ts';
import type { IngressParts } from './ingress.ts';
import { lowpowerChecks } from '../lowpower.ts';
import type { Live } from './live.ts';
import type { UpstreamParts } from './upstream.ts';
import type { VendingParts } from './vending.ts';

interface AdminStepDeps {
  /** The database can be reached now. */
  databaseUp(): boolean;
  /** The nodes sharing the database. */
  cluster(): Promise<ClusterView>;
  stores: Stores;
  metrics: Metrics;
  vending: VendingParts;
  upstream: UpstreamParts;
  ingress: IngressParts;
  log: Logger;
}

/** The admin API (SIMs, tokens, /readyz, /metrics), when enabled. */
export async function startAdminApi(live: Live, deps: AdminStepDeps): Promise<AdminServer | undefined> {
  const config = live.config;
  if (!config.admin.enabled) return undefined;
  const { vendor } = deps.vending;
  const { pool, health } = deps.upstream;
  const { mqtt, http } = deps.ingress;
  const diskHasRoom = () => {
    try {
      return freeBytes(live.config.dataDir) >= live.config.storage.minFreeMb * 1024 * 1024;
    } catch {
      return false;
    }
  };
  return startAdmin(config.admin, {
    stores: deps.stores,
    metrics: deps.metrics.registry,
    log: deps.log.child({ component: 'admin' }),
    ready: () => {
      const upstream = health.checks();
      // A full disk makes every commit fail (503 to devices): a balancer should send them elsewhere.
      const checks = { database: deps.databaseUp(), disk: diskHasRoom(), mqtt: mqtt.listening(), http: http.listening(), ...lowpowerChecks(deps.ingress.lowpower), ...upstream.checks };
      // Not only 'insecure': a reload may relax groups while the restart-only identity section stays.
      const warnings = identityFindings(live.config).filter((f) => f.severity !== 'note').map(describeFinding);
      return { ok: Object.values(checks).every(Boolean), checks, reasons: upstream.reasons, warnings };
    },
    groups: () => live.config.groups,
    defaultGroup: () => live.config.sims.defaultGroup,
    thingName: (imsi, g) => fillName(live.config.vending.thingName, { imsi, group: g }),
    revoke: async (imsi, reason) => {
      await vendor.revoke(imsi, reason);
    },
    upstreamState: (thing) => {
      const session = pool.peek(thing);
      return session ? { state: 'connected', since: session.openedAt } : { state: 'closed' };
    },
    connected: (imsi) => mqtt.isConnected(imsi),
    cluster: deps.cluster,
    maskIdentifiers: config.privacy.maskIdentifiers,
  });
}
