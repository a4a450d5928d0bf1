import { iso } from './schemas.ts';
import type { AdminStores } from './types.ts';

const count = { type: 'integer' } as const;

export const fleetStatsSchema = {
  type: 'object',
  properties: {
    sims: {
      type: 'object',
      properties: { total: count, active: count, suspended: count, terminated: count, bound: count, online: count },
    },
    groups: {
      type: 'array',
      items: { type: 'object', properties: { group: { type: 'string' }, total: count, active: count, bound: count, online: count } },
    },
    certificates: { type: 'object', description: 'SIMs by certificate state', properties: { ready: count, vending: count } },
    outbox: {
      type: 'object',
      description: "Device messages waiting; the gateway's own lifecycle events are counted in events.queued",
      properties: { depth: count, sims: count, oldestReceivedAt: { type: ['string', 'null'], format: 'date-time' } },
    },
    events: { type: 'object', description: 'Lifecycle events (docs/events.md) waiting in the outbox', properties: { queued: count } },
    deadLetters: { type: 'object', properties: { total: count, last24h: count } },
    networkSessions: count,
  },
} as const;

/** The fleet at a glance, for `simbridge stats` and dashboards. */
export async function fleetStats(stores: AdminStores, onlineSince: number) {
  const totals = { total: 0, active: 0, suspended: 0, terminated: 0, bound: 0, online: 0 };
  const groups = new Map<string, { group: string; total: number; active: number; bound: number; online: number }>();
  for (const c of await stores.sims.counts(onlineSince)) {
    totals.total += c.total;
    totals[c.status] += c.total;
    totals.bound += c.bound;
    totals.online += c.online;
    const g = groups.get(c.group) ?? { group: c.group, total: 0, active: 0, bound: 0, online: 0 };
    g.total += c.total;
    if (c.status === 'active') g.active += c.total;
    g.bound += c.bound;
    g.online += c.online;
    groups.set(c.group, g);
  }
  const [outbox, dead, networkSessions, certificates] = await Promise.all([
    stores.outboxStats.summary(),
    stores.outboxStats.deadLetters(Date.now() - 86_400_000),
    stores.networkSessions.count(),
    stores.credentialReads.countByState(),
  ]);
  return {
    sims: totals,
    groups: [...groups.values()],
    certificates,
    outbox: { depth: outbox.depth, sims: outbox.sims, oldestReceivedAt: iso(outbox.oldestReceivedAt) },
    events: { queued: outbox.events },
    deadLetters: { total: dead.total, last24h: dead.recent },
    networkSessions,
  };
}
