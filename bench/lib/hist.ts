// A fixed-bucket latency histogram that can cross process boundaries (a plain Uint32Array) and be
// merged by adding. 10 µs buckets up to 100 ms, then 1 ms buckets up to 120 s; beyond that, the last.

const FINE_MS = 100;
const FINE_STEP_MS = 0.01;
const FINE_BUCKETS = FINE_MS / FINE_STEP_MS; // 10,000
const COARSE_MAX_MS = 120_000;
const BUCKETS = FINE_BUCKETS + (COARSE_MAX_MS - FINE_MS); // 129,900

export type Hist = Uint32Array;

export function newHist(): Hist {
  return new Uint32Array(BUCKETS);
}

export function record(h: Hist, ms: number): void {
  if (!(ms > 0)) ms = 0;
  const i = ms < FINE_MS ? Math.floor(ms / FINE_STEP_MS) : Math.min(BUCKETS - 1, FINE_BUCKETS + Math.floor(ms - FINE_MS));
  h[i]++;
}

export function merge(into: Hist, from: Hist): Hist {
  for (let i = 0; i < BUCKETS; i++) into[i] += from[i];
  return into;
}

export function count(h: Hist): number {
  let n = 0;
  for (let i = 0; i < BUCKETS; i++) n += h[i];
  return n;
}

/** The upper edge of the bucket holding the q-quantile (0..1), in ms; null when empty. */
export function quantile(h: Hist, q: number): number | null {
  const n = count(h);
  if (n === 0) return null;
  const rank = Math.max(1, Math.ceil(q * n));
  let seen = 0;
  for (let i = 0; i < BUCKETS; i++) {
    seen += h[i];
    if (seen >= rank) return i < FINE_BUCKETS ? (i + 1) * FINE_STEP_MS : FINE_MS + (i - FINE_BUCKETS + 1);
  }
  return COARSE_MAX_MS;
}
