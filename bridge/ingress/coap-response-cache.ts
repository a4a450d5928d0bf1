/** What the `coap` library attaches to a response it caches: the sender that (re)transmits it. */
interface CachedResponse extends Buffer {
  sender?: { reset(): void };
}

/**
 * A cached answer: its bytes as a one-byte string (a Buffer copy would be a slice of Node's shared
 * pool and keep a whole 8 KB slab alive for the exchange lifetime), or, for a Confirmable one, the
 * library's own buffer with its sender.
 */
interface Entry {
  text?: string;
  confirmable?: CachedResponse;
  cost: number;
  at: number;
}

/**
 * Heap an entry holds besides its response bytes: the map slot, the key, the entry and its string's
 * header (an estimate, so that the byte bound is a bound on memory, not only on payload).
 */
export const ENTRY_OVERHEAD_BYTES = 200;

/**
 * The `coap` library's cache of sent responses, which answers a retransmitted request again (RFC 7252
 * §4.5), put in place of its own. The library's cache counts only each response's bytes against its
 * bound, but every entry keeps the whole exchange alive with it (its sender, the response stream and
 * the request: kilobytes of heap for a 20-byte answer) and a 202-second timer: at 2,000 requests/s the
 * young-generation collections copied megabytes of them each time and stalled the main thread for 10
 * to 20 ms every 150 ms (bench/results/changes.md). Here an entry is a copy of the response's bytes;
 * only a Confirmable response (a separate response, sent again until the device acknowledges it) keeps
 * the library's sender, which is reset when the entry goes, as the library's own cache does on
 * disposal. Entries all live the exchange lifetime, so the oldest is always first in insertion order:
 * expiry and eviction take from the front, with no timer per entry.
 *
 * The library uses peek, set, delete, purgeStale and clear, and keeps its prune timer on the cache.
 */
export class CoapResponseCache {
  private readonly entries = new Map<string, Entry>();
  private bytes = 0;
  /** Set by the library (its periodic purgeStale). */
  pruneTimer?: NodeJS.Timeout;

  constructor(
    /** Most bytes held, overhead included (listeners.coap.responseCacheBytes). */
    private readonly maxBytes: number,
    private readonly lifetimeMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  peek(key: string): CachedResponse | undefined {
    const e = this.entries.get(key);
    if (!e || this.now() - e.at >= this.lifetimeMs) return undefined;
    return e.confirmable ?? Buffer.from(e.text!, 'latin1');
  }

  set(key: string, response: CachedResponse): this {
    this.delete(key);
    // A Confirmable response (type 0, RFC 7252 §3) is retransmitted by its sender until acknowledged:
    // the entry keeps it so that its removal stops the sender. Any other answer is sent once, and its
    // sender's only timer would keep the exchange alive for nothing: stopped once the library has set it.
    const confirmable = response.length > 0 && ((response[0]! >> 4) & 3) === 0;
    if (!confirmable) {
      queueMicrotask(() => {
        response.sender?.reset();
        response.sender = undefined;
      });
    }
    const cost = response.length + key.length + ENTRY_OVERHEAD_BYTES;
    this.entries.set(key, confirmable ? { confirmable: response, cost, at: this.now() } : { text: response.toString('latin1'), cost, at: this.now() });
    this.bytes += cost;
    // Expired entries go with the library's prune timer (peek never answers with one); only the bound
    // is enforced here, per answer, and only past it is the map walked.
    if (this.bytes > this.maxBytes) {
      for (const oldest of this.entries.keys()) {
        if (this.bytes <= this.maxBytes) break;
        this.delete(oldest);
      }
    }
    return this;
  }

  delete(key: string): boolean {
    const e = this.entries.get(key);
    if (!e) return false;
    this.entries.delete(key);
    this.bytes -= e.cost;
    e.confirmable?.sender?.reset();
    return true;
  }

  /** Drops what has outlived the exchange lifetime (the oldest first, so it stops at the first that has not). */
  purgeStale(): void {
    const before = this.now() - this.lifetimeMs;
    for (const [key, e] of this.entries) {
      if (e.at > before) break;
      this.delete(key);
    }
  }

  clear(): void {
    for (const key of [...this.entries.keys()]) this.delete(key);
  }
}
