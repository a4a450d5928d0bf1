/**
 * Paces calls to one API at `rate` per second with bursts of at most `capacity` calls: over any window
 * of t seconds at most capacity + rate·t calls leave, which the server's bucket (rate, burst ≥ capacity)
 * always admits. A capacity above 1 keeps a late timer (a busy event loop) from losing turns. Waiters
 * are served in arrival order, so a SIM queued first is not overtaken.
 */
export class TokenBucket {
  private tokens: number;
  private at: number;
  private readonly waiters: Array<{ n: number; resolve: () => void }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly rate: number,
    private readonly capacity = 1,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = capacity;
    this.at = now();
  }

  /**
   * Paces to a quota counted over any one-second window (IoT Core's per-connection publish and byte
   * quotas, where the excess is dropped without an answer): a burst of `burst`, then a rate of
   * perSecond − burst − slack. Over any second at most burst + rate leave, `slack` below the quota,
   * which absorbs the timing differences between sender and receiver (a late timer here, packets that
   * arrive together there) of up to slack / rate seconds. A bucket whose capacity equals its rate
   * would let twice the quota through in the first second of a backlog.
   */
  static withinQuota(perSecond: number, burst: number, slack = perSecond / 10): TokenBucket {
    const capacity = Math.max(1, Math.min(burst, perSecond / 2));
    return new TokenBucket(Math.max(perSecond - capacity - slack, perSecond / 10), capacity);
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Takes n tokens if they may go now (nobody waits before them); false, taking nothing, when not. */
  takeNow(n = 1): boolean {
    const need = Math.min(n, this.capacity);
    if (this.waiters.length > 0) return false;
    this.refill();
    if (this.tokens < need) return false;
    this.tokens -= need;
    return true;
  }

  /** Resolves when n tokens (calls, or bytes for a byte-rate bucket) may go; n above the capacity waits for a full bucket. */
  take(n = 1): Promise<void> {
    const need = Math.min(n, this.capacity);
    this.refill();
    if (this.waiters.length === 0 && this.tokens >= need) {
      this.tokens -= need;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.waiters.push({ n: need, resolve });
      this.schedule();
    });
  }

  /** The server throttled us anyway (another client on the account, a lower quota): skip `tokens` turns. */
  penalize(tokens: number): void {
    this.refill();
    this.tokens = Math.min(this.tokens, 0) - tokens;
  }

  private refill(): void {
    const now = this.now();
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
  }

  private schedule(): void {
    if (this.timer) return;
    const wait = Math.max(0, ((this.waiters[0]!.n - this.tokens) / this.rate) * 1000);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.refill();
      while (this.waiters.length > 0 && this.tokens >= this.waiters[0]!.n) {
        const w = this.waiters.shift()!;
        this.tokens -= w.n;
        w.resolve();
      }
      if (this.waiters.length > 0) this.schedule();
    }, Math.ceil(wait));
  }
}
