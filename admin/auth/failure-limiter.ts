/**
 * Counts failed sign-ins per key (a client address, a token prefix: admin/auth/guard.ts) in fixed
 * windows. A key that reaches the limit is blocked until its window ends; the guard then answers its
 * invalid attempts with 429 without counting them further.
 */
export class FailureLimiter {
  private readonly windows = new Map<string, { count: number; until: number }>();

  constructor(
    private readonly maxFailures: number,
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Milliseconds the key must wait, or 0 if it may try. */
  blockedFor(address: string): number {
    const w = this.windows.get(address);
    if (!w) return 0;
    const left = w.until - this.now();
    if (left <= 0) {
      this.windows.delete(address);
      return 0;
    }
    return w.count >= this.maxFailures ? left : 0;
  }

  /** Records a failure; true when this one reached the limit (the key is blocked from now on). */
  fail(address: string): boolean {
    const now = this.now();
    let w = this.windows.get(address);
    if (!w || w.until <= now) {
      w = { count: 0, until: now + this.windowMs };
      this.windows.set(address, w);
      this.prune(now);
    }
    w.count++;
    return w.count === this.maxFailures;
  }

  // Bounded memory under a spray of source addresses: drop windows that have ended.
  private prune(now: number): void {
    if (this.windows.size < 10_000) return;
    for (const [k, w] of this.windows) if (w.until <= now) this.windows.delete(k);
  }
}
