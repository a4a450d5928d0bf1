import { RatType } from '../bridge/radius/dictionary.ts';
import { certificateState } from '../storage/credentials.ts';
import { auditEventRef, iso, simRef } from './schemas.ts';
import { simJson } from './sim-json.ts';
import type { AdminDeps, AdminStores } from './types.ts';

const nullableTime = { type: ['string', 'null'], format: 'date-time' } as const;

/** Response schema of GET /v1/sims/:imsi. */
export const deviceViewSchema = {
  type: 'object',
  required: ['sim', 'lock', 'network', 'certificate', 'upstream', 'outbox', 'online', 'recentEvents'],
  properties: {
    sim: simRef,
    lock: {
      type: 'object',
      properties: {
        mode: { type: 'string', description: 'effective IMEI lock mode' },
        from: { type: 'string', enum: ['sim', 'group'] },
        boundImei: { type: ['string', 'null'] },
      },
    },
    network: {
      type: 'array',
      description: 'sessions the mobile network reports for the SIM (RADIUS accounting), newest first',
      items: {
        type: 'object',
        properties: {
          ip: { type: 'string' },
          imei: { type: ['string', 'null'] },
          ratType: { type: ['integer', 'null'] },
          rat: { type: ['string', 'null'] },
          since: { type: 'string', format: 'date-time' },
          updatedAt: { type: 'string', format: 'date-time' },
        },
      },
    },
    certificate: {
      type: 'object',
      properties: {
        state: { type: 'string', enum: ['none', 'vending', 'ready', 'retired'] },
        step: { type: ['string', 'null'] },
        certificateId: { type: ['string', 'null'] },
        notAfter: nullableTime,
        lastError: { type: ['string', 'null'] },
        attempts: { type: 'integer' },
        updatedAt: nullableTime,
        generations: { type: 'integer', description: 'certificates this SIM has had' },
      },
    },
    upstream: {
      type: 'object',
      properties: { state: { type: 'string' }, since: nullableTime, detail: { type: ['string', 'null'] } },
    },
    outbox: {
      type: 'object',
      properties: { depth: { type: 'integer' }, oldestReceivedAt: nullableTime },
    },
    connected: { type: ['boolean', 'null'], description: 'holds a device connection now; null when the gateway does not say' },
    online: { type: 'boolean', description: 'a network session, or a message from the device within admin.onlineWindowSeconds (as in the fleet listing)' },
    lastMessageAt: nullableTime,
    deliveredAt: { ...nullableTime, description: 'when a message the device sent first reached IoT Core since its IMEI was last bound; null while none has' },
    recentEvents: { type: 'array', items: auditEventRef },
  },
} as const;

export interface DeviceViewDeps extends Pick<AdminDeps, 'groups' | 'upstreamState' | 'connected'> {
  stores: AdminStores;
  onlineWindowMs: number;
}

/** Everything known about one device, read fresh: identity, lock, network, certificate, upstream, queue. */
export async function deviceView(imsi: string, deps: DeviceViewDeps) {
  const { stores } = deps;
  const sim = await stores.sims.get(imsi);
  if (!sim) return undefined;
  const groupLock = deps.groups()[sim.group]?.lock ?? 'first-contact';
  const [sessions, outbox, events, history] = await Promise.all([
    stores.networkSessions.byImsi(imsi),
    stores.outboxStats.ofSim(imsi),
    stores.audit.query({ imsi, limit: 20 }),
    stores.credentialReads.history(imsi),
  ]);
  const creds = history.reverse();
  const current = creds.find((c) => c.step === 'ready') ?? creds[0];
  const upstream = deps.upstreamState?.(sim.thingName);
  const connected = deps.connected ? deps.connected(imsi) : null;
  // last_seen_at is the gateway's word; a message still queued proves contact even before that is written.
  const lastMessageAt = Math.max(sim.lastSeenAt ?? 0, outbox.newestFromDevice ?? 0) || null;
  // The fleet listing's rule, so the two views never disagree about a SIM; a connection is reported apart.
  const online = await stores.sims.isOnline(imsi, Date.now() - deps.onlineWindowMs);

  return {
    sim: simJson(sim),
    lock: { mode: sim.lockMode ?? groupLock, from: sim.lockMode ? 'sim' : 'group', boundImei: sim.boundImei },
    network: sessions.map((s) => ({
      ip: s.ip,
      imei: s.imei,
      ratType: s.ratType,
      rat: s.ratType === null ? null : (RatType[s.ratType] ?? null),
      since: iso(s.startedAt)!,
      updatedAt: iso(s.updatedAt)!,
    })),
    certificate: current
      ? {
          state: certificateState(current.step),
          step: current.step,
          certificateId: current.certId,
          notAfter: iso(current.notAfter),
          lastError: current.lastError,
          attempts: current.attempts,
          updatedAt: iso(current.updatedAt),
          generations: creds.length,
        }
      : { state: 'none', step: null, certificateId: null, notAfter: null, lastError: null, attempts: 0, updatedAt: null, generations: 0 },
    upstream: upstream ? { state: upstream.state, since: iso(upstream.since), detail: upstream.detail ?? null } : { state: 'unknown', since: null, detail: null },
    outbox: { depth: outbox.depth, oldestReceivedAt: iso(outbox.oldestReceivedAt) },
    connected,
    online,
    lastMessageAt: iso(lastMessageAt),
    deliveredAt: iso(sim.deliveredAt),
    recentEvents: events.items.map((e) => ({ ...e, at: iso(e.at)! })),
  };
}
