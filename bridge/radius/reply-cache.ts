// Duplicate detection (RFC 5080 §2.2.2): a NAS that missed our reply retransmits the same packet (same
// source, Identifier and Request Authenticator). It must get the same reply, and the accounting record
// must not be applied twice.

interface Entry {
  /** null while the request is being applied: a duplicate then is dropped, not applied again. */
  reply: Buffer | null;
  expiresAt: number;
}

export class ReplyCache {
  // A Map iterates in insertion order and every entry lives equally long, so expired ones sit in front.
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries = 100_000,
    private readonly now: () => number = Date.now,
  ) {}

  static key(sourceIp: string, sourcePort: number, identifier: number, authenticator: Buffer): string {
    return `${sourceIp}|${sourcePort}|${identifier}|${authenticator.toString('base64')}`;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The cached reply, null if the original is still being applied, undefined if not a duplicate. */
  get(key: string): Buffer | null | undefined {
    this.sweep();
    return this.entries.get(key)?.reply;
  }

  /** Marks a request as being applied. */
  reserve(key: string): void {
    this.put(key, null);
  }

  /** Stores the reply sent for a request. */
  fulfil(key: string, reply: Buffer): void {
    this.put(key, reply);
  }

  /** Forgets a request that could not be applied, so that its retransmission is tried afresh. */
  forget(key: string): void {
    this.entries.delete(key);
  }

  private put(key: string, reply: Buffer | null): void {
    this.entries.delete(key); // re-insert at the end: keeps expiry order
    if (this.ttlMs <= 0 && reply) return;
    this.entries.set(key, { reply, expiresAt: this.now() + this.ttlMs });
    // Bounded memory under a flood: the oldest entries go first.
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
  }

  private sweep(): void {
    const now = this.now();
    for (const [key, e] of this.entries) {
      if (e.expiresAt > now || e.reply === null) break;
      this.entries.delete(key);
    }
  }
}
