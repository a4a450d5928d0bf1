import { maskId } from '../lib/ids.ts';

// Keys whose values identify a subscriber or a modem. `bound` and `seen` are the IMEIs of lock refusals.
const IDENTIFIER_KEYS = new Set(['imsi', 'imei', 'imeisv', 'iccid', 'msisdn', 'boundImei', 'bound', 'seen', 'previous']);
const THING_KEYS = new Set(['thing', 'thingName', 'clientId', 'url', 'route']);

/**
 * A copy of a log object with subscriber identifiers masked (maskId: first 5 and last 2 digits), at any
 * depth. Only digit strings are touched, so `bound: true` or `seen: null` pass through. Masking a masked
 * value changes nothing, so layers that each mask do no harm.
 */
export function maskIdentifiers<T>(value: T, depth = 0): T {
  if (depth > 4 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => maskIdentifiers(v, depth + 1)) as T;
  if (value instanceof Error || Buffer.isBuffer(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v === 'string' && IDENTIFIER_KEYS.has(k) && /^\+?\d{6,20}$/.test(v)) out[k] = maskId(v);
    // Thing names are built from the IMSI (sim-{imsi}): mask the digit runs inside them.
    else if (typeof v === 'string' && THING_KEYS.has(k)) out[k] = maskPath(v);
    else out[k] = maskIdentifiers(v, depth + 1);
  }
  return out as T;
}

/**
 * pino options that mask identifiers in every log line: the log formatter masks the objects logged (at any
 * depth); serializers mask the same keys in child-logger bindings, which pino passes through serializers
 * but not through formatters. Adopt with `pino({ ...maskingLoggerOptions(config.privacy.maskIdentifiers) })`;
 * `logger.child(bindings, maskingLoggerOptions())` does the same below one logger.
 */
// `log` is generic so it fits both pino()'s and child()'s option types, which differ.
export function maskingLoggerOptions(enabled = true): { formatters: { log<T extends object>(o: T): T }; serializers: Record<string, (v: unknown) => unknown> } {
  if (!enabled) return { formatters: { log: (o) => o }, serializers: {} };
  const serializers: Record<string, (v: unknown) => unknown> = {};
  for (const k of IDENTIFIER_KEYS) serializers[k] = (v) => (typeof v === 'string' && /^\+?\d{6,20}$/.test(v) ? maskId(v) : v);
  for (const k of THING_KEYS) serializers[k] = (v) => (typeof v === 'string' ? maskPath(v) : v);
  return { formatters: { log: (o) => maskIdentifiers(o) }, serializers };
}

/** A request path with IMSI-like digit runs masked, for logs. */
export function maskPath(path: string): string {
  return path.replace(/\d{6,20}/g, (d) => maskId(d)!);
}
