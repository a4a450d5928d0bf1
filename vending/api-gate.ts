import { backoffMs, classify, isRetryable, mayHaveApplied, sleep, type FailureKind } from './retry.ts';
import { TokenBucket } from '../lib/token-bucket.ts';

export interface ApiGateOptions {
  /** Requests per second per API name; an API without an entry is not paced. */
  rates: Record<string, number>;
  /** Burst per API, in seconds of its rate (at least one call). */
  burstSeconds: number;
  timeoutMs: number;
  maxAttempts: number;
  retryDelayMs: number;
  retryMaxDelayMs: number;
  /** Called for each failed attempt, retried or not (metrics, logs). */
  onAttemptFailed?(api: string, kind: FailureKind, err: unknown): void;
}

export interface CallOptions {
  /** The call failed in a way that may have taken effect (5xx, no answer), even if a retry then succeeded. */
  onUncertain?(): void;
}

/** An API call that failed for good, after its retries; `kind` says how. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly api: string,
    readonly kind: FailureKind,
    override readonly cause: unknown,
  ) {
    super(`${api}: ${(cause as Error)?.name ?? 'Error'}: ${(cause as Error)?.message ?? String(cause)}`);
  }
}

// Throttled despite our own pacing: skip a turn so the account's bucket can refill.
const THROTTLE_PENALTY_TOKENS = 1;

/**
 * Every IoT Core call goes through here: paced by its API's token bucket, given a timeout, and retried
 * with exponential backoff and full jitter on throttling, 5xx and network errors. Each retry takes a
 * token again, so retries stay within the quota too.
 */
export class ApiGate {
  private readonly buckets = new Map<string, TokenBucket>();
  private stopped = false;

  constructor(private readonly opts: ApiGateOptions) {
    for (const [api, rate] of Object.entries(opts.rates)) this.buckets.set(api, new TokenBucket(rate, Math.max(1, rate * opts.burstSeconds)));
  }

  /** Callers waiting for a token, per API. */
  waiting(): Record<string, number> {
    return Object.fromEntries([...this.buckets].map(([api, b]) => [api, b.waiting]));
  }

  stop(): void {
    this.stopped = true;
  }

  async call<T>(api: string, fn: (signal: AbortSignal) => Promise<T>, opts: CallOptions = {}): Promise<T> {
    const bucket = this.buckets.get(api);
    for (let attempt = 0; ; attempt++) {
      if (this.stopped) throw new ApiError(api, 'client', new Error('vending stopped'));
      await bucket?.take();
      try {
        return await fn(AbortSignal.timeout(this.opts.timeoutMs));
      } catch (err) {
        const kind = classify(err);
        this.opts.onAttemptFailed?.(api, kind, err);
        if (mayHaveApplied(kind)) opts.onUncertain?.();
        if (kind === 'throttled') bucket?.penalize(THROTTLE_PENALTY_TOKENS);
        if (!isRetryable(kind) || attempt + 1 >= this.opts.maxAttempts || this.stopped) throw new ApiError(api, kind, err);
        await sleep(backoffMs(attempt, this.opts.retryDelayMs, this.opts.retryMaxDelayMs));
      }
    }
  }
}
