import { describe, expect, it } from 'vitest';
import { isIccid, isImsi, luhnDigit, maskId, normaliseImei, sameDevice } from '../lib/ids.ts';

describe('identifier rules', () => {
  it('computes the Luhn check digit of a known IMEI', () => {
    expect(luhnDigit('49015420323751')).toBe(8);
  });

  it('accepts IMSIs of 6-15 digits only', () => {
    expect(isImsi('001010000000001')).toBe(true);
    expect(isImsi('00101')).toBe(false);
    expect(isImsi('0010100000000012')).toBe(false);
    expect(isImsi('00101000000000a')).toBe(false);
  });

  it('checks ICCID prefix and Luhn digit', () => {
    const body = '898820000000000001';
    expect(isIccid(body + luhnDigit(body))).toBe(true);
    expect(isIccid(body + ((luhnDigit(body) + 1) % 10))).toBe(false);
    expect(isIccid('12' + body.slice(2) + '0')).toBe(false);
  });

  it('normalises IMEI, IMEI with a spare 0 and IMEISV to the 15-digit IMEI', () => {
    expect(normaliseImei('490154203237518')).toEqual({ imei: '490154203237518' });
    expect(normaliseImei('490154203237510')).toEqual({ imei: '490154203237518' });
    // IMEISV: TAC+SNR then a 2-digit software version; the IMEI's check digit is recomputed.
    expect(normaliseImei('4901542032375101')).toEqual({ imei: '490154203237518' });
    expect(normaliseImei('490154203237517')).toEqual({ problem: 'bad_check_digit' });
    expect(normaliseImei('49015420323751')).toEqual({ problem: 'bad_length' });
    expect(normaliseImei('49015420323751x')).toEqual({ problem: 'not_digits' });
  });

  it('compares devices on TAC+SNR', () => {
    expect(sameDevice('490154203237518', '490154203237510')).toBe(true);
    expect(sameDevice('490154203237518', '490154203237526')).toBe(false);
  });

  it('masks identifiers for logs', () => {
    expect(maskId('001010000000001')).toBe('00101********01');
  });
});
