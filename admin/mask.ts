import { stdSerializers } from 'pino';
import { maskId } from '../lib/ids.ts';

// Keys whose values identify a subscriber or a modem. `bound` and `seen` are the IMEIs of lock refusals.
const IDENTIFIER_KEYS = new Set(['imsi', 'imei', 'imeisv', 'iccid', 'msisdn', 'boundImei', 'bound', 'seen', 'previous']);
// Keys whose values are names or paths built from identifiers: thing names (sim-{imsi}), topics and
// filters (devices/sim-{imsi}/..., $aws/things/sim-{imsi}/shadow/#), URLs and routes.
const NAME_KEYS = new Set(['thing', 'thingName', 'clientId', 'url', 'route', 'topic', 'filter', 'deviceTopic', 'upstreamTopic', 'batchTopic', 'path']);

// In free text (error messages, reasons), digit runs this long standing alone are taken for identifiers;
// shorter ones (byte counts, ports, limits) stay readable. Words with a "/" are topics or paths: every
// 6-20 digit run in them is masked, as in NAME_KEYS.
const LONE_DIGITS = /(?<![0-9A-Za-z])\+?\d{9,20}(?![0-9A-Za-z])/g;
const WORD_WITH_SLASH = /[^\s"'`]*\/[^\s"'`]*/g;

/** Free text with identifiers masked: thing names and topics inside it, and long lone digit runs. */
export function maskText(text: string): string {
  return text.replace(WORD_WITH_SLASH, maskPath).replace(/\bsim-\d{6,20}/g, maskPath).replace(LONE_DIGITS, (d) => (d.startsWith('+') ? '+' + maskId(d.slice(1)) : maskId(d)!));
}

/** An error as pino's err serializer shows it (type, message, stack, own fields), with identifiers masked. */
function maskError(err: unknown): unknown {
  const plain = stdSerializers.err(err as Error) as unknown as Record<string, unknown>;
  if (!plain || typeof plain !== 'object') return typeof plain === 'string' ? maskText(plain) : plain;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(plain)) out[k] = typeof v === 'string' ? maskText(v) : maskIdentifiers(v, 1);
  return out;
}

/**
 * A copy of a log object with subscriber identifiers masked (maskId: first 5 and last 2 digits), at any
 * depth: identifier keys whole, thing names and topics wherever they appear (NAME_KEYS, and inside any
 * other string, error messages included). Only digits are touched, so `bound: true` or `seen: null` pass
 * through. Masking a masked value changes nothing, so layers that each mask do no harm.
 */
export function maskIdentifiers<T>(value: T, depth = 0): T {
  if (typeof value === 'string') return maskText(value) as T;
  if (depth > 4 || value === null || typeof value !== 'object') return value;
  if (value instanceof Error) return maskError(value) as T;
  if (Array.isArray(value)) return value.map((v) => maskIdentifiers(v, depth + 1)) as T;
  if (Buffer.isBuffer(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v === 'string' && IDENTIFIER_KEYS.has(k) && /^\+?\d{6,20}$/.test(v)) out[k] = maskId(v);
    // Thing names are built from the IMSI (sim-{imsi}): mask the digit runs inside them.
    else if (typeof v === 'string' && NAME_KEYS.has(k)) out[k] = maskPath(v);
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
  for (const k of NAME_KEYS) serializers[k] = (v) => (typeof v === 'string' ? maskPath(v) : v);
  // Errors reach pino's err serializer after the formatter: mask what it makes of them.
  for (const k of ['err', 'error']) serializers[k] = (v) => (typeof v === 'string' ? maskText(v) : v instanceof Error ? maskError(v) : v);
  return { formatters: { log: (o) => maskIdentifiers(o) }, serializers };
}

/** A request path with IMSI-like digit runs masked, for logs. */
export function maskPath(path: string): string {
  return path.replace(/\d{6,20}/g, (d) => maskId(d)!);
}
