// Identifier rules for SIMs and modems (3GPP TS 23.003, ITU-T E.118).

/** Luhn check digit for a string of decimal digits. */
export function luhnDigit(digits: string): number {
  let sum = 0;
  // Double every second digit starting from the rightmost (the check digit is appended to the right).
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 0) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return (10 - (sum % 10)) % 10;
}

/** IMSI: MCC (3) + MNC (2-3) + MSIN, digits only, 6-15 long. */
export function isImsi(s: string): boolean {
  return /^\d{6,15}$/.test(s);
}

/** ICCID: 19-20 digits, industry prefix 89, last digit a Luhn check. */
export function isIccid(s: string): boolean {
  return /^89\d{17,18}$/.test(s) && luhnDigit(s.slice(0, -1)) === Number(s.at(-1));
}

export type ImeiProblem = 'not_digits' | 'bad_length' | 'bad_check_digit';

/**
 * Normalises what a network or device calls an IMEI to the 15-digit IMEI.
 * Accepts a 15-digit IMEI (Luhn-checked; a spare 0 in place of the check digit is tolerated, as some
 * networks send it) or a 16-digit IMEISV (TAC + SNR + SVN), whose IMEI is TAC+SNR plus the Luhn digit
 * over those 14 digits.
 */
export function normaliseImei(s: string): { imei: string } | { problem: ImeiProblem } {
  if (!/^\d+$/.test(s)) return { problem: 'not_digits' };
  if (s.length === 16) return { imei: withCheckDigit(s.slice(0, 14)) };
  if (s.length !== 15) return { problem: 'bad_length' };
  const body = s.slice(0, 14);
  const check = Number(s[14]);
  if (check === luhnDigit(body)) return { imei: s };
  if (check === 0) return { imei: withCheckDigit(body) };
  return { problem: 'bad_check_digit' };
}

function withCheckDigit(tacSnr: string): string {
  return tacSnr + String(luhnDigit(tacSnr));
}

/** Two IMEIs are the same device when TAC+SNR (first 14 digits) agree. */
export function sameDevice(a: string, b: string): boolean {
  return a.slice(0, 14) === b.slice(0, 14);
}

/** Masks an identifier for logs: keeps the first 5 and last 2 digits. */
export function maskId(s: string | undefined | null): string | undefined {
  if (!s) return undefined;
  return s.length <= 7 ? '*'.repeat(s.length) : s.slice(0, 5) + '*'.repeat(s.length - 7) + s.slice(-2);
}
