// Turns a decoded Accounting-Request into the one change it asks of the session table.

import { isImsi, normaliseImei } from '../../lib/ids.ts';
import type { SessionReport } from '../../storage/network-sessions.ts';
import { decodeVendorSpecific, readIpv4, readText, readU32, type Attribute, type Packet } from './codec.ts';
import { Attr, Attr3gpp, StatusType, VENDOR_3GPP } from './dictionary.ts';
import { decodeImeisv } from './threegpp.ts';

export type AccountingRecord =
  | { kind: 'start' | 'interim'; report: SessionReport; imeiProblem?: string }
  | { kind: 'stop'; ip: string; acctSessionId: string; nasIp: string; imsi?: string }
  | { kind: 'nas_on' | 'nas_off'; nasIp: string; nasIdentifier: string | null };

export type AccountingReason = 'bad_attribute' | 'missing_attribute' | 'invalid_attribute' | 'unsupported_status_type';

export type Parsed =
  | { ok: true; value: AccountingRecord }
  | { ok: false; error: { reason: AccountingReason; detail: string } };

const fail = (reason: AccountingReason, detail: string): Parsed => ({ ok: false, error: { reason, detail } });

/** Attributes by type, first occurrence kept; 3GPP sub-attributes under their own map. */
function index(attributes: Attribute[]): { top: Map<number, Buffer>; gpp: Map<number, Buffer> } | string {
  const top = new Map<number, Buffer>();
  const gpp = new Map<number, Buffer>();
  for (const a of attributes) {
    if (a.type !== Attr.VendorSpecific) {
      if (!top.has(a.type)) top.set(a.type, a.value);
      continue;
    }
    // Other vendors may not follow the suggested sub-attribute layout: only 3GPP's is taken apart.
    if (a.value.length >= 5 && a.value.readUInt32BE(0) !== VENDOR_3GPP) continue;
    const vsa = decodeVendorSpecific(a.value);
    if (!vsa.ok) return vsa.error.detail;
    for (const s of vsa.value.attributes) if (!gpp.has(s.type)) gpp.set(s.type, s.value);
  }
  return { top, gpp };
}

/**
 * Validates what each Acct-Status-Type needs (RFC 2866 §5) and reads the identity attributes.
 * `sourceIp` stands in for a missing NAS-IP-Address: the datagram came from the NAS (RFC 2865 §5.4).
 */
export function parseAccountingRequest(packet: Packet, sourceIp: string): Parsed {
  const idx = index(packet.attributes);
  if (typeof idx === 'string') return fail('bad_attribute', idx);
  const { top, gpp } = idx;

  const statusRaw = top.get(Attr.AcctStatusType);
  if (!statusRaw) return fail('missing_attribute', 'Acct-Status-Type');
  const status = readU32(statusRaw);
  if (status === undefined) return fail('invalid_attribute', 'Acct-Status-Type length');

  const nasIpRaw = top.get(Attr.NasIpAddress);
  const nasIp = nasIpRaw ? readIpv4(nasIpRaw) : sourceIp;
  if (!nasIp) return fail('invalid_attribute', 'NAS-IP-Address length');
  const nasIdRaw = top.get(Attr.NasIdentifier);
  const nasIdentifier = nasIdRaw ? readText(nasIdRaw) : null;

  if (status === StatusType.AccountingOn || status === StatusType.AccountingOff) {
    return { ok: true, value: { kind: status === StatusType.AccountingOn ? 'nas_on' : 'nas_off', nasIp, nasIdentifier } };
  }
  const kind = status === StatusType.Start ? 'start' : status === StatusType.Stop ? 'stop' : status === StatusType.InterimUpdate ? 'interim' : undefined;
  if (!kind) return fail('unsupported_status_type', `Acct-Status-Type ${status}`);

  const ipRaw = top.get(Attr.FramedIpAddress);
  if (!ipRaw) return fail('missing_attribute', 'Framed-IP-Address');
  const ip = readIpv4(ipRaw);
  // RFC 2865 §5.8: 255.255.255.255 and .254 are requests for an address, not an address; 0.0.0.0 is none.
  if (!ip || ip === '0.0.0.0' || ip.startsWith('255.255.255.25')) return fail('invalid_attribute', 'Framed-IP-Address');
  const sessionRaw = top.get(Attr.AcctSessionId);
  if (!sessionRaw) return fail('missing_attribute', 'Acct-Session-Id');
  const acctSessionId = readText(sessionRaw);
  if (!acctSessionId) return fail('invalid_attribute', 'Acct-Session-Id empty');

  const imsiRaw = gpp.get(Attr3gpp.Imsi);
  const imsi = imsiRaw ? readText(imsiRaw) : undefined;
  if (imsi !== undefined && !isImsi(imsi)) return fail('invalid_attribute', '3GPP-IMSI');
  if (kind === 'stop') return { ok: true, value: { kind, ip, acctSessionId, nasIp, imsi } };
  // Without the IMSI a session identifies no one: nothing to record.
  if (!imsi) return fail('missing_attribute', '3GPP-IMSI');

  let ratType: number | null = null;
  const ratRaw = gpp.get(Attr3gpp.RatType);
  if (ratRaw) {
    if (ratRaw.length !== 1) return fail('invalid_attribute', '3GPP-RAT-Type length');
    ratType = ratRaw[0]!;
  }
  let chargingId: number | null = null;
  const chargingRaw = gpp.get(Attr3gpp.ChargingId);
  if (chargingRaw) {
    const v = readU32(chargingRaw);
    if (v === undefined) return fail('invalid_attribute', '3GPP-Charging-ID length');
    chargingId = v;
  }
  // A bad IMEI does not void the session (the SIM is still known); it is recorded as unknown.
  let imei: string | null = null;
  let imeiProblem: string | undefined;
  const imeiRaw = gpp.get(Attr3gpp.Imeisv);
  if (imeiRaw) {
    const digits = decodeImeisv(imeiRaw);
    const normal = 'digits' in digits ? normaliseImei(digits.digits) : digits;
    if ('imei' in normal) imei = normal.imei;
    else imeiProblem = normal.problem;
  }
  // RFC 2869 §5.3: when the event happened, in seconds since the epoch (replays carry their old one).
  const eventRaw = top.get(Attr.EventTimestamp);
  const eventSeconds = eventRaw ? readU32(eventRaw) : undefined;
  if (eventRaw && eventSeconds === undefined) return fail('invalid_attribute', 'Event-Timestamp length');
  const msisdnRaw = top.get(Attr.CallingStationId);
  const report: SessionReport = {
    ip,
    imsi,
    imei,
    msisdn: msisdnRaw ? readText(msisdnRaw) || null : null,
    ratType,
    nasIp,
    nasIdentifier,
    acctSessionId,
    chargingId,
    eventTime: eventSeconds === undefined ? null : eventSeconds * 1000,
  };
  return { ok: true, value: { kind, report, ...(imeiProblem ? { imeiProblem } : {}) } };
}
