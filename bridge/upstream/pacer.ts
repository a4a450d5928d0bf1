/**
 * A token bucket that callers wait on: `take(n)` resolves when n tokens are available, in FIFO order,
 * so bursts are smoothed to the configured rate instead of being refused.
 */
export class Pacer {
  private tokens: number;
  private last = Date.now();
  private readonly waiters: Array<{ n: number; resolve: () => void }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number = ratePerSecond,
  ) {
    this.tokens = burst;
  }

  /** Takes n tokens at once if available (true), without waiting. */
  tryTake(n = 1): boolean {
    this.refill();
    if (this.waiters.length === 0 && this.tokens >= n) {
      this.tokens -= n;
      return true;
    }
    return false;
  }

  take(n = 1): Promise<void> {
    if (this.tryTake(n)) return Promise.resolve();
    return new Promise((resolve) => {
      // A request larger than the bucket would wait forever: let it through when the bucket is full.
      this.waiters.push({ n: Math.min(n, this.burst), resolve });
      this.schedule();
    });
  }

  get waiting(): number {
    return this.waiters.length;
  }

  private refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.ratePerSecond);
    this.last = now;
  }

  private schedule(): void {
    if (this.timer) return;
    const head = this.waiters[0];
    if (!head) return;
    this.refill();
    const waitMs = Math.max(0, ((head.n - this.tokens) / this.ratePerSecond) * 1000);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.refill();
      while (this.waiters.length && this.tokens >= this.waiters[0]!.n) {
        const w = this.waiters.shift()!;
        this.tokens -= w.n;
        w.resolve();
      }
      this.schedule();
    }, Math.ceil(waitMs));
    this.timer.unref();
  }
}
