// Which sources may send accounting, and the shared secret of each (RFC 2865 §3: secrets are per client).

import { AddressTable } from '../../lib/address-table.ts';

export interface RadiusClientConfig {
  /** An address or a CIDR block, IPv4 or IPv6: '10.0.0.1', '10.0.0.0/24', 'fd00::/8'. */
  address: string;
  secret: string;
}

/** The NAS clients by address; the most specific block wins, so a host can have its own secret inside a wider block. */
export class ClientTable {
  private readonly table = new AddressTable<{ secret: Buffer; label: string }>();

  /** Throws on an invalid address, prefix or empty secret: a configuration error, found at startup. */
  constructor(clients: RadiusClientConfig[]) {
    for (const c of clients) {
      if (!c.secret) throw new Error(`radius client ${c.address}: empty secret`);
      try {
        this.table.add(c.address, { secret: Buffer.from(c.secret, 'utf8'), label: c.address });
      } catch {
        throw new Error(`radius client address is not an IP or CIDR: ${c.address}`);
      }
    }
  }

  /** The client a datagram's source address belongs to, if any (IPv4-mapped IPv6 sources are their IPv4 address). */
  lookup(source: string): { secret: Buffer; label: string } | undefined {
    return this.table.lookup(source);
  }
}
