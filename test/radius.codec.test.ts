import { describe, expect, it } from 'vitest';
import { parseAccountingRequest } from '../bridge/radius/accounting.ts';
import { requestAuthenticator, signAccountingResponse, verifyAccountingRequest, verifyAccountingResponse } from '../bridge/radius/authenticator.ts';
import { ClientTable } from '../bridge/radius/clients.ts';
import { decodePacket, decodeVendorSpecific, encodePacket, type Packet } from '../bridge/radius/codec.ts';
import { buildAccountingRequest } from '../bridge/radius/request.ts';
import { decodeImeisv, encodeTbcd } from '../bridge/radius/threegpp.ts';

const SECRET = 's3cret';
const IMSI = '001010123456789';

// Sent by FreeRADIUS radclient 3.2.1 (`radclient 127.0.0.1:18130 acct s3cret`) and captured off the wire:
// Start, Framed-IP 127.0.0.2, Acct-Session-Id "abc", 3GPP-IMSI, 3GPP-IMEISV "0x53...", 3GPP-RAT-Type 8.
const RADCLIENT_START = Buffer.from(
  '0498005f3bf885a9056ec0958574c45c30b90f7c28060000000108067f0000022c056162631a17000028af01113030313031303132333435363738391a1a000028af14143078353330323031303030303030303031301a09000028af150308',
  'hex',
);

function decoded(buf: Buffer): Packet {
  const d = decodePacket(buf);
  if (!d.ok) throw new Error(d.error.detail);
  return d.value;
}

describe('RADIUS codec bounds (RFC 2865 §3, §5)', () => {
  const valid = buildAccountingRequest({ identifier: 7, status: 'Start', framedIp: '10.0.0.1', acctSessionId: 's', imsi: IMSI }, SECRET);

  it('decodes a packet radclient sent', () => {
    const p = decoded(RADCLIENT_START);
    expect(p.code).toBe(4);
    expect(p.identifier).toBe(0x98);
    expect(p.attributes.map((a) => a.type)).toEqual([40, 8, 44, 26, 26, 26]);
    const vsa = decodeVendorSpecific(p.attributes[3]!.value);
    expect(vsa.ok && vsa.value).toEqual({ vendorId: 10415, attributes: [{ type: 1, value: Buffer.from(IMSI) }] });
  });

  it('names the reason for each malformed datagram instead of throwing', () => {
    const reason = (b: Buffer) => {
      const d = decodePacket(b);
      return d.ok ? 'ok' : d.error.reason;
    };
    expect(reason(valid)).toBe('ok');
    expect(reason(valid.subarray(0, 19))).toBe('truncated');
    expect(reason(valid.subarray(0, valid.length - 1))).toBe('truncated'); // Length says more than arrived
    const lie = (n: number) => {
      const b = Buffer.from(valid);
      b.writeUInt16BE(n, 2);
      return b;
    };
    expect(reason(lie(19))).toBe('bad_length');
    expect(reason(lie(4097))).toBe('bad_length');
    expect(reason(Buffer.concat([valid, Buffer.alloc(4097 - valid.length)]))).toBe('oversize');
    // Octets after Length are padding (§3): ignored, and not covered by the authenticator.
    const padded = Buffer.concat([valid, Buffer.from('junk')]);
    expect(reason(padded)).toBe('ok');
    expect(verifyAccountingRequest(decoded(padded).bytes, Buffer.from(SECRET))).toBe(true);
    const attrLen = (at: number, len: number) => {
      const b = Buffer.from(valid);
      b[at + 1] = len;
      return b;
    };
    expect(reason(attrLen(20, 1))).toBe('bad_attribute');
    expect(reason(attrLen(20, 0))).toBe('bad_attribute');
    expect(reason(attrLen(20, 250))).toBe('bad_attribute');
    expect(reason(Buffer.concat([lie(valid.length + 1), Buffer.from([40])]))).toBe('bad_attribute'); // dangling type octet
  });

  it('refuses to encode what no valid packet holds', () => {
    expect(() => encodePacket({ code: 4, identifier: 1, attributes: [{ type: 1, value: Buffer.alloc(254) }] })).toThrow(RangeError);
    const many = Array.from({ length: 17 }, () => ({ type: 1, value: Buffer.alloc(253) }));
    expect(() => encodePacket({ code: 4, identifier: 1, attributes: many })).toThrow(RangeError);
  });
});

describe('accounting authenticators (RFC 2866 §3)', () => {
  it('verifies the Request Authenticator radclient computed, and rejects it altered or with another secret', () => {
    expect(verifyAccountingRequest(RADCLIENT_START, Buffer.from(SECRET))).toBe(true);
    expect(verifyAccountingRequest(RADCLIENT_START, Buffer.from('other'))).toBe(false);
    for (const at of [4, 11, 19]) {
      const altered = Buffer.from(RADCLIENT_START);
      altered[at]! ^= 0x01;
      expect(verifyAccountingRequest(altered, Buffer.from(SECRET))).toBe(false);
    }
    const body = Buffer.from(RADCLIENT_START);
    body[body.length - 1] = 6; // RAT-Type changed: the authenticator covers the attributes
    expect(verifyAccountingRequest(body, Buffer.from(SECRET))).toBe(false);
    expect(requestAuthenticator(RADCLIENT_START, Buffer.from(SECRET))).toEqual(RADCLIENT_START.subarray(4, 20));
  });

  it('signs a response over the request authenticator', () => {
    const reqAuth = RADCLIENT_START.subarray(4, 20);
    const reply = signAccountingResponse(encodePacket({ code: 5, identifier: 0x98, attributes: [] }), reqAuth, Buffer.from(SECRET));
    expect(verifyAccountingResponse(reply, reqAuth, Buffer.from(SECRET))).toBe(true);
    expect(verifyAccountingResponse(reply, Buffer.alloc(16), Buffer.from(SECRET))).toBe(false);
  });
});

describe('3GPP-IMEISV (TS 29.061 §16.4.7.2)', () => {
  it('reads text and nibble-swapped TBCD with 0xF filler', () => {
    expect(decodeImeisv(Buffer.from('4901542032375101'))).toEqual({ digits: '4901542032375101' });
    expect(decodeImeisv(Buffer.from('9410450223731510', 'hex'))).toEqual({ digits: '4901542032375101' });
    expect(decodeImeisv(Buffer.from('94104502237315f8', 'hex'))).toEqual({ digits: '490154203237518' });
    expect(encodeTbcd('490154203237518')).toEqual(Buffer.from('94104502237315f8', 'hex'));
    expect(decodeImeisv(Buffer.from('9410450223f31510', 'hex'))).toEqual({ problem: 'bad_bcd' }); // digit after filler
    expect(decodeImeisv(Buffer.from('941045022373151a', 'hex'))).toEqual({ problem: 'bad_bcd' });
    expect(decodeImeisv(Buffer.from('0x5302'))).toEqual({ problem: 'not_digits' });
  });

  it('normalises the IMEI and keeps a session whose IMEI is unusable', () => {
    const parse = (imeisv: string | { bcd: string }) => {
      const r = parseAccountingRequest(
        decoded(buildAccountingRequest({ identifier: 1, status: 'Start', framedIp: '10.0.0.1', acctSessionId: 's', imsi: IMSI, imeisv }, SECRET)),
        '127.0.0.1',
      );
      if (!r.ok || r.value.kind !== 'start') throw new Error('not a start');
      return r.value;
    };
    expect(parse('4901542032375101').report.imei).toBe('490154203237518');
    expect(parse({ bcd: '4901542032375101' }).report.imei).toBe('490154203237518');
    expect(parse({ bcd: '490154203237510' }).report.imei).toBe('490154203237518'); // spare 0 check digit
    expect(parse('490154203237517')).toMatchObject({ report: { imei: null }, imeiProblem: 'bad_check_digit' });
  });

  it('asks each status type for what it needs', () => {
    const reason = (input: Parameters<typeof buildAccountingRequest>[0]) => {
      const r = parseAccountingRequest(decoded(buildAccountingRequest(input, SECRET)), '127.0.0.1');
      return r.ok ? r.value.kind : r.error.reason;
    };
    expect(reason({ identifier: 1, status: 'Start', framedIp: '10.0.0.1', acctSessionId: 's' })).toBe('missing_attribute');
    expect(reason({ identifier: 1, status: 'Start', acctSessionId: 's', imsi: IMSI })).toBe('missing_attribute');
    expect(reason({ identifier: 1, status: 'Start', framedIp: '10.0.0.1', acctSessionId: 's', imsi: '12ab' })).toBe('invalid_attribute');
    expect(reason({ identifier: 1, status: 'Start', framedIp: '0.0.0.0', acctSessionId: 's', imsi: IMSI })).toBe('invalid_attribute');
    expect(reason({ identifier: 1, status: 'Stop', framedIp: '10.0.0.1', acctSessionId: 's' })).toBe('stop');
    expect(reason({ identifier: 1, status: 'AccountingOn' })).toBe('nas_on');
    expect(reason({ identifier: 1, status: 15 })).toBe('unsupported_status_type'); // Failed (RFC 2866 §5.1)
    const shortVsa = { type: 26, value: Buffer.from([0, 0, 0x28, 0xaf]) };
    expect(reason({ identifier: 1, status: 'AccountingOn', extra: [shortVsa] })).toBe('bad_attribute');
    const lyingSub = { type: 26, value: Buffer.from([0, 0, 0x28, 0xaf, 1, 9, 0x30]) };
    expect(reason({ identifier: 1, status: 'AccountingOn', extra: [lyingSub] })).toBe('bad_attribute');
  });
});

describe('RADIUS clients', () => {
  it('matches addresses and CIDR blocks, v4 and v6, the most specific first', () => {
    const t = new ClientTable([
      { address: '10.0.0.0/8', secret: 'wide' },
      { address: '10.1.2.3', secret: 'host' },
      { address: 'fd00::/16', secret: 'v6' },
    ]);
    expect(t.lookup('10.1.2.3')?.secret.toString()).toBe('host');
    expect(t.lookup('::ffff:10.9.9.9')?.secret.toString()).toBe('wide');
    expect(t.lookup('fd00:1::5')?.secret.toString()).toBe('v6');
    expect(t.lookup('11.0.0.1')).toBeUndefined();
    expect(() => new ClientTable([{ address: '10.0.0.0/33', secret: 'x' }])).toThrow();
    expect(() => new ClientTable([{ address: 'nas.example', secret: 'x' }])).toThrow();
    expect(() => new ClientTable([{ address: '10.0.0.1', secret: '' }])).toThrow();
  });
});
