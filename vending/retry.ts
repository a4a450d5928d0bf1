/**
 * How an IoT Core call failed, which decides what happens next:
 *  - throttled: refused before it was carried out (ThrottlingException; the sandbox answers 429) → retry, slower;
 *  - server:    5xx → retry; it may have been carried out;
 *  - network:   no answer (reset, refused, timeout) → retry; it may have been carried out;
 *  - client:    any other 4xx: retrying the same request will not help.
 */
export type FailureKind = 'throttled' | 'server' | 'network' | 'client';

const THROTTLE_NAMES = new Set(['ThrottlingException', 'TooManyRequestsException', 'RequestLimitExceeded', 'SlowDown', 'Throttling']);
const NETWORK_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'ERR_SOCKET_CONNECTION_TIMEOUT',
]);
const NETWORK_NAMES = new Set(['TimeoutError', 'AbortError', 'RequestTimeout', 'RequestTimeoutException']);

interface SdkError {
  name?: string;
  code?: string;
  $fault?: 'client' | 'server';
  $metadata?: { httpStatusCode?: number };
}

export function classify(err: unknown): FailureKind {
  const e = (err ?? {}) as SdkError;
  const status = e.$metadata?.httpStatusCode;
  if ((e.name && THROTTLE_NAMES.has(e.name)) || status === 429) return 'throttled';
  if ((status !== undefined && status >= 500) || e.$fault === 'server') return 'server';
  if ((e.code && NETWORK_CODES.has(e.code)) || (e.name && NETWORK_NAMES.has(e.name))) return 'network';
  // An error with no HTTP status never got an answer: treat it as lost on the way.
  if (status === undefined && e.$fault === undefined) return 'network';
  return 'client';
}

export const isRetryable = (kind: FailureKind) => kind !== 'client';

/** The request may have taken effect although we got no usable answer. */
export const mayHaveApplied = (kind: FailureKind) => kind === 'server' || kind === 'network';

/** Exponential backoff with full jitter: uniform in [0, min(max, base·2^attempt)). */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  return random() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * IoT Core applies some changes asynchronously: DetachThingPrincipal "might take several seconds to
 * propagate", and DeleteCertificate before then answers DeleteConflictException (409). Such a call is
 * tried again every stepMs until it works or waitMs has passed.
 */
export async function untilPropagated<T>(fn: () => Promise<T>, waitMs: number, stepMs: number): Promise<T> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!isConflict(err) || Date.now() + stepMs > deadline) throw err;
      await sleep(stepMs);
    }
  }
}

const isConflict = (err: unknown) => [(err as Error)?.name, ((err as { cause?: Error })?.cause as Error | undefined)?.name].includes('DeleteConflictException');
