import { randomUUID } from 'node:crypto';
import type { EventKind, EventsConfig } from '../../config/events.ts';
import type { EventFact, RenderedEvent } from '../../storage/events.ts';

/** Version of every event's JSON (docs/events.md); raised when a field changes meaning or goes away. */
export const EVENT_SCHEMA_VERSION = 1;

export interface RenderOptions {
  /** The events section as configured now (kinds may change on reload; the gateway name needs a restart). */
  settings(): Pick<EventsConfig, 'gateway' | 'kinds' | 'topicPrefix'>;
  /** Masks subscriber identifiers as privacy.maskIdentifiers says (the logs' own masking: admin/mask.ts). */
  mask<T>(value: T): T;
}

type Fields = Record<string, unknown>;

/** A fact's event kind and its own fields, before the envelope and masking; undefined when it is no event. */
function classify(fact: EventFact): { kind: EventKind; imsi: string | null; fields: Fields } | undefined {
  if (fact.source === 'network') {
    const s = fact.session;
    const session = { ip: s.ip, imei: s.imei, msisdn: s.msisdn, ratType: s.ratType, nasIp: s.nasIp, acctSessionId: s.acctSessionId, startedAt: new Date(s.startedAt).toISOString() };
    return fact.change === 'start'
      ? { kind: 'network_session_start', imsi: s.imsi, fields: { session } }
      : { kind: 'network_session_stop', imsi: s.imsi, fields: { session, cause: fact.cause } };
  }
  if (fact.source === 'outbox') {
    // Decided in the outbox's own transaction (the audit row of it is a commit of its own, after).
    const m = fact.message;
    return fact.change === 'dead_letter'
      ? { kind: 'message_dead_lettered', imsi: m.imsi, fields: { messageId: m.id, topic: m.deviceTopic, reason: fact.reason } }
      : { kind: 'message_dropped_quota', imsi: m.imsi, fields: { messageId: m.id, topic: m.deviceTopic, bytes: m.bytes, receivedAt: new Date(m.receivedAt).toISOString(), reason: fact.reason } };
  }
  const d = fact.detail;
  const imsi = fact.imsi;
  switch (fact.kind) {
    case 'sim_registered':
      return { kind: 'first_contact', imsi, fields: { source: d.source ?? null, remoteAddress: d.remoteAddress ?? null } };
    case 'vended':
      // The promotion's own audit row (same commit as the new certificate going into use): a rotation
      // when it replaced a certificate.
      return d.replaces
        ? { kind: 'certificate_rotated', imsi, fields: { thing: d.thing, certificateId: d.certificateId, previousCertificateId: d.replaces } }
        : { kind: 'certificate_vended', imsi, fields: { thing: d.thing, certificateId: d.certificateId } };
    case 'credentials_revoked':
      return { kind: 'certificate_revoked', imsi, fields: { reason: d.reason, certificateIds: d.certificateIds ?? [] } };
    case 'imei_mismatch':
      return { kind: 'imei_mismatch', imsi, fields: { boundImei: d.bound ?? null, seenImei: d.seen ?? null, source: d.source ?? null, remoteAddress: d.remoteAddress ?? null } };
    case 'sim_status_changed':
      if (d.from === d.to || (d.to !== 'suspended' && d.to !== 'terminated')) return undefined;
      return { kind: d.to === 'suspended' ? 'sim_suspended' : 'sim_terminated', imsi, fields: { from: d.from ?? null, by: d.by ?? null } };
    default:
      return undefined;
  }
}

/**
 * Renders what a store records into the gateway's event (storage/events.ts calls it inside the
 * transaction of the change): `{topicPrefix}/{gateway}/events/{kind}`, a JSON envelope (version, kind,
 * gateway, eventId, at, sim) around the kind's own fields, identifiers masked as configured.
 */
export function eventRenderer(o: RenderOptions): (fact: EventFact) => RenderedEvent | undefined {
  return (fact) => {
    const found = classify(fact);
    if (!found) return undefined;
    const { gateway, kinds, topicPrefix } = o.settings();
    if (!kinds.includes(found.kind)) return undefined;
    const body = {
      version: EVENT_SCHEMA_VERSION,
      kind: found.kind,
      gateway,
      // Delivery is at-least-once: a consumer drops a repeat by this id.
      eventId: randomUUID(),
      at: new Date(fact.at).toISOString(),
      // Only the SIM's part and the kind's fields carry identifiers: the envelope stays as it is.
      ...o.mask({ sim: { imsi: found.imsi }, ...found.fields }),
    };
    return { topic: `${topicPrefix}/${gateway}/events/${found.kind}`, payload: Buffer.from(JSON.stringify(body)) };
  };
}
