// RADIUS packet framing (RFC 2865 §3 and §5), written by hand so every bound is checked here:
// decoding never throws, it returns a reason the listener can count.

import { isIPv4 } from 'node:net';

export const HEADER_LENGTH = 20;
/** RFC 2865 §3: "The minimum length is 20 and maximum length is 4096." */
export const MAX_PACKET_LENGTH = 4096;
/** An attribute's Length octet counts its own 2-octet header, so a value holds at most 253 octets. */
export const MAX_ATTRIBUTE_VALUE = 253;

export interface Attribute {
  type: number;
  value: Buffer;
}

export interface Packet {
  code: number;
  identifier: number;
  /** 16 octets: Request Authenticator in requests, Response Authenticator in replies. */
  authenticator: Buffer;
  attributes: Attribute[];
  /** The packet's octets up to its Length field (padding after it dropped); what authenticators cover. */
  bytes: Buffer;
}

export type DecodeReason = 'truncated' | 'bad_length' | 'oversize' | 'bad_attribute';

export interface DecodeError {
  reason: DecodeReason;
  detail: string;
}

export type Decoded<T> = { ok: true; value: T } | { ok: false; error: DecodeError };

const fail = (reason: DecodeReason, detail: string): { ok: false; error: DecodeError } => ({
  ok: false,
  error: { reason, detail },
});

/** Decodes one datagram. Values are views into `datagram`, not copies. */
export function decodePacket(datagram: Buffer): Decoded<Packet> {
  if (datagram.length > MAX_PACKET_LENGTH) return fail('oversize', `datagram of ${datagram.length} octets`);
  if (datagram.length < HEADER_LENGTH) return fail('truncated', `datagram of ${datagram.length} octets`);
  const length = datagram.readUInt16BE(2);
  if (length < HEADER_LENGTH || length > MAX_PACKET_LENGTH) return fail('bad_length', `length field ${length}`);
  // RFC 2865 §3: shorter than Length → silently discard; octets beyond Length are padding, ignored.
  if (length > datagram.length) return fail('truncated', `length field ${length} > datagram ${datagram.length}`);
  const bytes = datagram.subarray(0, length);
  const attributes = decodeAttributes(bytes.subarray(HEADER_LENGTH));
  if (!attributes.ok) return attributes;
  return {
    ok: true,
    value: {
      code: bytes[0]!,
      identifier: bytes[1]!,
      authenticator: bytes.subarray(4, HEADER_LENGTH),
      attributes: attributes.value,
      bytes,
    },
  };
}

/** Type-Length-Value list (RFC 2865 §5); also the layout of RFC-style vendor sub-attributes (§5.26). */
export function decodeAttributes(region: Buffer): Decoded<Attribute[]> {
  const out: Attribute[] = [];
  let at = 0;
  while (at < region.length) {
    if (region.length - at < 2) return fail('bad_attribute', `dangling octet at ${at}`);
    const type = region[at]!;
    const len = region[at + 1]!;
    if (len < 2) return fail('bad_attribute', `attribute ${type} length ${len} < 2`);
    if (at + len > region.length) return fail('bad_attribute', `attribute ${type} length ${len} overruns the packet`);
    out.push({ type, value: region.subarray(at + 2, at + len) });
    at += len;
  }
  return { ok: true, value: out };
}

export interface VendorSpecific {
  vendorId: number;
  attributes: Attribute[];
}

/**
 * Splits a Vendor-Specific value (RFC 2865 §5.26: Vendor-Id, 4 octets, then the vendor's string) into
 * sub-attributes, assuming the RFC's suggested one-octet type / one-octet length layout that 3GPP uses.
 */
export function decodeVendorSpecific(value: Buffer): Decoded<VendorSpecific> {
  // §5.26: Length >= 7, i.e. a value of Vendor-Id plus at least one octet.
  if (value.length < 5) return fail('bad_attribute', `Vendor-Specific of ${value.length} octets`);
  const attributes = decodeAttributes(value.subarray(4));
  if (!attributes.ok) return attributes;
  return { ok: true, value: { vendorId: value.readUInt32BE(0), attributes: attributes.value } };
}

export interface PacketFields {
  code: number;
  identifier: number;
  /** 16 octets; zeros when omitted (to be filled in by the signer). */
  authenticator?: Buffer;
  attributes: Attribute[];
}

/** Encodes a packet; throws RangeError on values a valid packet cannot hold (a programming error). */
export function encodePacket(p: PacketFields): Buffer {
  if (!Number.isInteger(p.code) || p.code < 0 || p.code > 255) throw new RangeError(`code ${p.code}`);
  if (!Number.isInteger(p.identifier) || p.identifier < 0 || p.identifier > 255) throw new RangeError(`identifier ${p.identifier}`);
  if (p.authenticator && p.authenticator.length !== 16) throw new RangeError('authenticator must be 16 octets');
  let length = HEADER_LENGTH;
  for (const a of p.attributes) {
    if (a.value.length > MAX_ATTRIBUTE_VALUE) throw new RangeError(`attribute ${a.type}: ${a.value.length} octets`);
    length += 2 + a.value.length;
  }
  if (length > MAX_PACKET_LENGTH) throw new RangeError(`packet of ${length} octets`);
  const out = Buffer.alloc(length);
  out[0] = p.code;
  out[1] = p.identifier;
  out.writeUInt16BE(length, 2);
  p.authenticator?.copy(out, 4);
  let at = HEADER_LENGTH;
  for (const a of p.attributes) {
    out[at] = a.type;
    out[at + 1] = a.value.length + 2;
    a.value.copy(out, at + 2);
    at += 2 + a.value.length;
  }
  return out;
}

/** Builds a Vendor-Specific value from sub-attributes (RFC 2865 §5.26 suggested layout). */
export function encodeVendorSpecific(vendorId: number, subs: Attribute[]): Buffer {
  const parts = [u32(vendorId)];
  for (const s of subs) {
    if (s.value.length > MAX_ATTRIBUTE_VALUE - 6) throw new RangeError(`sub-attribute ${s.type}: ${s.value.length} octets`);
    parts.push(Buffer.from([s.type, s.value.length + 2]), s.value);
  }
  const value = Buffer.concat(parts);
  if (value.length > MAX_ATTRIBUTE_VALUE) throw new RangeError(`Vendor-Specific of ${value.length} octets`);
  return value;
}

// Value types of RFC 2865 §5: integer (32-bit big-endian), address (4 octets), text (UTF-8).

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

export function ipv4(address: string): Buffer {
  if (!isIPv4(address)) throw new RangeError(`not an IPv4 address: ${address}`);
  return Buffer.from(address.split('.').map(Number));
}

export function text(s: string): Buffer {
  return Buffer.from(s, 'utf8');
}

export function readU32(value: Buffer): number | undefined {
  return value.length === 4 ? value.readUInt32BE(0) : undefined;
}

export function readIpv4(value: Buffer): string | undefined {
  return value.length === 4 ? `${value[0]}.${value[1]}.${value[2]}.${value[3]}` : undefined;
}

/** Text value; trailing NULs, which some NAS implementations append, are not part of it. */
export function readText(value: Buffer): string {
  let end = value.length;
  while (end > 0 && value[end - 1] === 0) end--;
  return value.toString('utf8', 0, end);
}
