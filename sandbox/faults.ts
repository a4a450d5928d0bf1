// Fault injection for the control plane, so vending can be tested against the
// failures AWS really produces: per-API TPS quotas (token buckets, like IoT
// Core's), random throttling and internal failures, scripted "next N calls
// fail", added latency, and answers held back after the change is made (a
// caller that dies then never learns of it). Everything defaults off.
import { z } from 'zod';
import { accessDenied, type AwsError, internalFailure, throttled } from './errors.ts';

const opCounts = z.record(z.string(), z.number().int().min(0));

export const faultConfigSchema = z
  .object({
    /** Fraction (0..1) of requests answered ThrottlingException. */
    throttleRate: z.number().min(0).max(1),
    /** Fraction (0..1) of requests answered InternalFailureException (500). */
    failureRate: z.number().min(0).max(1),
    /** Delay added before every request is handled. */
    latencyMs: z.number().int().min(0).max(60_000),
    /** Delay between handling a request and answering it: the change is made, the caller does not know yet. */
    answerDelayMs: z.number().int().min(0).max(60_000),
    /** Limits throttleRate, failureRate, latencyMs and answerDelayMs to these operations; null = all. */
    operations: z.array(z.string()).nullable(),
    /** Per-operation quota in requests per second (burst = one second's worth), e.g. { CreateCertificateFromCsr: 15 }. */
    tps: z.record(z.string(), z.number().positive()),
    /** The next N calls of an operation are throttled, e.g. { AttachPolicy: 2 }. */
    throttleNext: opCounts,
    /** The next N calls of an operation fail with InternalFailureException. */
    failNext: opCounts,
    /** Operations the caller's IAM policy does not grant: answered AccessDeniedException before anything else. */
    denied: z.array(z.string()),
  })
  .strict();

export type FaultConfig = z.infer<typeof faultConfigSchema>;
export type FaultConfigPatch = Partial<FaultConfig>;

export interface FaultStats {
  requests: Record<string, number>;
  throttled: Record<string, number>;
  failed: Record<string, number>;
  totals: { requests: number; throttled: number; failed: number };
}

export interface FaultDecision {
  delayMs: number;
  /** Hold the answer this long after handling (absent = 0). */
  answerDelayMs?: number;
  /** The error to answer instead of handling the request, if any. */
  error?: AwsError;
}

const defaults = (): FaultConfig => ({
  throttleRate: 0,
  failureRate: 0,
  latencyMs: 0,
  answerDelayMs: 0,
  operations: null,
  tps: {},
  throttleNext: {},
  failNext: {},
  denied: [],
});

interface Bucket {
  tokens: number;
  at: number;
}

export class FaultInjector {
  private cfg: FaultConfig = defaults();
  private buckets = new Map<string, Bucket>();
  private counters = { requests: {}, throttled: {}, failed: {} } as Omit<FaultStats, 'totals'>;
  private readonly random: () => number;
  private readonly now: () => number;

  constructor(random: () => number = Math.random, now: () => number = () => performance.now()) {
    this.random = random;
    this.now = now;
  }

  /** Merges patch into the current configuration (validated; throws ZodError). */
  configure(patch: FaultConfigPatch): FaultConfig {
    const merged = faultConfigSchema.parse({ ...this.cfg, ...patch });
    // A changed quota starts from a full bucket.
    for (const op of Object.keys(patch.tps ?? {})) this.buckets.delete(op);
    this.cfg = merged;
    return this.config;
  }

  get config(): FaultConfig {
    return structuredClone(this.cfg);
  }

  /** Back to no faults, full buckets and zero counters. */
  reset(): void {
    this.cfg = defaults();
    this.buckets.clear();
    this.resetCounters();
  }

  resetCounters(): void {
    this.counters = { requests: {}, throttled: {}, failed: {} };
  }

  stats(): FaultStats {
    const sum = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);
    const c = structuredClone(this.counters);
    return { ...c, totals: { requests: sum(c.requests), throttled: sum(c.throttled), failed: sum(c.failed) } };
  }

  /** Decides the fate of one call of operation; counts it. */
  decide(operation: string): FaultDecision {
    bump(this.counters.requests, operation);
    const targeted = this.cfg.operations === null || this.cfg.operations.includes(operation);
    const delayMs = targeted ? this.cfg.latencyMs : 0;
    const answerDelayMs = targeted && this.cfg.answerDelayMs > 0 ? this.cfg.answerDelayMs : undefined;

    // IAM authorizes a request before IoT Core looks at it.
    if (this.cfg.denied.includes(operation)) {
      return { delayMs, error: accessDenied(`User: arn:aws:iam::000000000000:user/sandbox is not authorized to perform: iot:${operation}`) };
    }

    if (!this.takeToken(operation) || this.scripted(this.cfg.throttleNext, operation) || (targeted && this.roll(this.cfg.throttleRate))) {
      bump(this.counters.throttled, operation);
      return { delayMs, error: throttled('Rate exceeded') };
    }
    if (this.scripted(this.cfg.failNext, operation) || (targeted && this.roll(this.cfg.failureRate))) {
      bump(this.counters.failed, operation);
      return { delayMs, error: internalFailure('An unexpected error has occurred (sandbox fault injection)') };
    }
    return answerDelayMs ? { delayMs, answerDelayMs } : { delayMs };
  }

  private takeToken(operation: string): boolean {
    const tps = this.cfg.tps[operation];
    if (tps === undefined) return true;
    const now = this.now();
    const b = this.buckets.get(operation) ?? { tokens: tps, at: now };
    b.tokens = Math.min(tps, b.tokens + ((now - b.at) / 1000) * tps);
    b.at = now;
    this.buckets.set(operation, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  private scripted(counts: Record<string, number>, operation: string): boolean {
    const n = counts[operation] ?? 0;
    if (n <= 0) return false;
    counts[operation] = n - 1;
    return true;
  }

  private roll(rate: number): boolean {
    return rate > 0 && this.random() < rate;
  }
}

function bump(r: Record<string, number>, k: string): void {
  r[k] = (r[k] ?? 0) + 1;
}
