// Values of the 3GPP vendor-specific attributes (TS 29.061 §16.4.7.2) that need more than a text read.

import { readText } from './codec.ts';

/**
 * 3GPP-IMEISV as digits. TS 29.061 specifies UTF-8 text (15-digit IMEI or 16-digit IMEISV), but some
 * gateways copy the GTP MEI IE instead: 8 octets of TBCD (TS 29.274 §8.10, TS 24.008 §10.5.1.4), each
 * octet holding the earlier digit in its low nibble, with 0xF filling the last nibble of a 15-digit IMEI.
 * An 8-octet value is read as TBCD: as text it would be 8 digits, which is no IMEI at all.
 */
export function decodeImeisv(value: Buffer): { digits: string } | { problem: 'not_digits' | 'bad_bcd' } {
  if (value.length === 8) return decodeTbcd(value);
  const s = readText(value);
  return /^\d+$/.test(s) ? { digits: s } : { problem: 'not_digits' };
}

function decodeTbcd(value: Buffer): { digits: string } | { problem: 'bad_bcd' } {
  let digits = '';
  let filler = false;
  for (const octet of value) {
    for (const nibble of [octet & 0x0f, octet >> 4]) {
      if (nibble === 0x0f) filler = true;
      else if (filler || nibble > 9) return { problem: 'bad_bcd' }; // a digit after filler, or 0xA-0xE
      else digits += String(nibble);
    }
  }
  return { digits };
}

/** TBCD encoding of a digit string, filler 0xF in the unused last nibble (for clients: tests, bench). */
export function encodeTbcd(digits: string): Buffer {
  if (!/^\d*$/.test(digits)) throw new RangeError('digits only');
  const out = Buffer.alloc(Math.ceil(digits.length / 2));
  for (let i = 0; i < out.length; i++) {
    const lo = Number(digits[2 * i]);
    const hi = 2 * i + 1 < digits.length ? Number(digits[2 * i + 1]) : 0x0f;
    out[i] = (hi << 4) | lo;
  }
  return out;
}
