// Caps on what one device-network peer may hold open, so a single address or SIM cannot use up the
// gateway's sockets and memory. Each refusal has a reason that every ingress counts and answers the same way.

import type { Socket } from 'node:net';
import { normaliseAddress } from '../../lib/address-table.ts';

/** Refusals of the ingress itself (not of a device's identity or message). */
export type IngressLimitReason = 'address_connection_limit' | 'sim_connection_limit' | 'keepalive_refused' | 'request_timeout';

/** Open connections per source address; each socket holds its place until it closes. */
export class AddressConnections {
  private readonly open = new Map<string, number>();

  constructor(private readonly max: number) {}

  /** Takes a place for the socket's address, given back on close; false (nothing taken) at the cap. */
  admit(socket: Socket): boolean {
    const address = normaliseAddress(socket.remoteAddress ?? '');
    const n = this.open.get(address) ?? 0;
    if (n >= this.max) return false;
    this.open.set(address, n + 1);
    socket.once('close', () => {
      const left = (this.open.get(address) ?? 1) - 1;
      if (left > 0) this.open.set(address, left);
      else this.open.delete(address);
    });
    return true;
  }
}

/**
 * New connections per source address and second, with bursts of twice that: a device reconnecting in a
 * loop (or a guesser trying secrets, each costing a hash) cannot keep the gateway busy. 0 turns it off.
 */
export class AddressConnectRate {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly burst: number;

  constructor(
    private readonly perSecond: number,
    private readonly now: () => number = Date.now,
  ) {
    this.burst = perSecond * 2;
  }

  /** Takes a turn for the address; false when it has none left. */
  admit(address: string): boolean {
    if (this.perSecond <= 0) return true;
    const now = this.now();
    let b = this.buckets.get(address);
    if (!b) this.buckets.set(address, (b = { tokens: this.burst, at: now }));
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.perSecond);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Forgets addresses whose bucket is full again (called now and then, so the table stays small). */
  prune(): void {
    const now = this.now();
    for (const [address, b] of this.buckets) if (b.tokens + ((now - b.at) / 1000) * this.perSecond >= this.burst) this.buckets.delete(address);
  }
}
