// Which sources may send accounting, and the shared secret of each (RFC 2865 §3: secrets are per client).

import { BlockList, isIP } from 'node:net';

export interface RadiusClientConfig {
  /** An address or a CIDR block, IPv4 or IPv6: '10.0.0.1', '10.0.0.0/24', 'fd00::/8'. */
  address: string;
  secret: string;
}

interface Entry {
  match: BlockList;
  prefix: number;
  secret: Buffer;
  label: string;
}

/** IPv4-mapped IPv6 sources (from a dual-stack socket) are their IPv4 address. */
export function normaliseAddress(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1]! : address;
}

export class ClientTable {
  private readonly entries: Entry[];

  /** Throws on an invalid address, prefix or empty secret: a configuration error, found at startup. */
  constructor(clients: RadiusClientConfig[]) {
    this.entries = clients.map((c) => {
      const [addr, bits, extra] = c.address.split('/');
      const family = isIP(addr ?? '');
      const max = family === 4 ? 32 : 128;
      const prefix = bits === undefined ? max : /^\d+$/.test(bits) ? Number(bits) : NaN;
      if (!family || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
        throw new Error(`radius client address is not an IP or CIDR: ${c.address}`);
      }
      if (!c.secret) throw new Error(`radius client ${c.address}: empty secret`);
      const match = new BlockList();
      match.addSubnet(addr!, prefix, family === 4 ? 'ipv4' : 'ipv6');
      return { match, prefix: family === 4 ? prefix + 96 : prefix, secret: Buffer.from(c.secret, 'utf8'), label: c.address };
    });
    // Most specific block first, so a host entry can carry its own secret inside a wider block.
    this.entries.sort((a, b) => b.prefix - a.prefix);
  }

  /** The client a datagram's source address belongs to, if any. */
  lookup(source: string): { secret: Buffer; label: string } | undefined {
    const address = normaliseAddress(source);
    const family = isIP(address);
    if (!family) return undefined;
    const type = family === 4 ? 'ipv4' : 'ipv6';
    return this.entries.find((e) => e.match.check(address, type));
  }
}
