import { normaliseAddress } from '../../lib/address-table.ts';

export interface DatagramGuardOptions {
  maxDatagramBytes: number;
  perAddressPerSecond: number;
  perAddressBurst: number;
  maxAddresses: number;
  now?: () => number;
}

export type DatagramProblem = 'datagram_too_large' | 'datagram_empty' | 'rate_limited';

/**
 * The first check on every datagram of the CoAP and raw UDP listeners, before any parsing: its size,
 * and a token bucket per source address so that one flooding address is dropped without slowing the
 * others. The table of addresses is bounded (least recently seen forgotten first).
 */
export class DatagramGuard {
  // Map iteration order is insertion order: re-inserting on use keeps the least recently seen first.
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly now: () => number;

  constructor(private readonly opts: DatagramGuardOptions) {
    this.now = opts.now ?? (() => performance.now());
  }

  check(address: string, bytes: number): DatagramProblem | undefined {
    if (bytes === 0) return 'datagram_empty';
    if (bytes > this.opts.maxDatagramBytes) return 'datagram_too_large';
    const key = normaliseAddress(address);
    const now = this.now();
    const { perAddressPerSecond: rate, perAddressBurst: burst } = this.opts;
    const seen = this.buckets.get(key);
    const bucket = seen ?? { tokens: burst, at: now };
    if (seen) this.buckets.delete(key);
    else if (this.buckets.size >= this.opts.maxAddresses) this.buckets.delete(this.buckets.keys().next().value!);
    bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * rate);
    bucket.at = now;
    this.buckets.set(key, bucket);
    if (bucket.tokens < 1) return 'rate_limited';
    bucket.tokens -= 1;
    return undefined;
  }
}
