/**
 * Counts failed sign-ins per source address in fixed windows. An address that reaches the limit is
 * refused outright until its window ends, whether or not its next token is right: otherwise a guesser
 * could keep guessing and learn from the one answer that differs.
 */
export class FailureLimiter {
  private readonly windows = new Map<string, { count: number; until: number }>();

  constructor(
    private readonly maxFailures: number,
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Milliseconds the address must wait, or 0 if it may try. */
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

  /** Records a failure; true when this one reached the limit (the address is blocked from now on). */
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
