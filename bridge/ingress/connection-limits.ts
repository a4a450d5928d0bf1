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
