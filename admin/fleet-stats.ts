import type { Db } from '../storage/db.ts';
import type { SimStore } from '../storage/sims.ts';
import { iso } from './schemas.ts';

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
    outbox: { type: 'object', properties: { depth: count, sims: count, oldestReceivedAt: { type: ['string', 'null'], format: 'date-time' } } },
    deadLetters: { type: 'object', properties: { total: count, last24h: count } },
    networkSessions: count,
  },
} as const;

/** The fleet at a glance, for `simbridge stats` and dashboards. */
export function fleetStats(db: Db, sims: SimStore, onlineSince: number) {
  const totals = { total: 0, active: 0, suspended: 0, terminated: 0, bound: 0, online: 0 };
  const groups = new Map<string, { group: string; total: number; active: number; bound: number; online: number }>();
  for (const c of sims.counts(onlineSince)) {
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
  const outbox = db.prepare('SELECT count(*) AS depth, count(DISTINCT imsi) AS sims, min(received_at) AS oldest FROM outbox').get() as { depth: number; sims: number; oldest: number | null };
  const certs = db
    .prepare(
      `SELECT count(DISTINCT CASE WHEN step = 'ready' THEN imsi END) AS ready,
              count(DISTINCT CASE WHEN step NOT IN ('ready', 'retiring', 'retired') THEN imsi END) AS vending
       FROM credentials`,
    )
    .get() as { ready: number; vending: number };
  const dead = db.prepare('SELECT count(*) AS total, count(CASE WHEN failed_at >= ? THEN 1 END) AS last24h FROM dead_letters').get(Date.now() - 86_400_000) as {
    total: number;
    last24h: number;
  };
  return {
    sims: totals,
    groups: [...groups.values()],
    certificates: certs,
    outbox: { depth: outbox.depth, sims: outbox.sims, oldestReceivedAt: iso(outbox.oldest) },
    deadLetters: dead,
    networkSessions: db.prepare('SELECT count(*) FROM network_sessions').pluck().get() as number,
  };
}
