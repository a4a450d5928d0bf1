import { BlockList, isIP } from 'node:net';

/** IPv4-mapped IPv6 sources (from a dual-stack socket) are their IPv4 address. */
export function normaliseAddress(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1]! : address;
}

interface Entry<T> {
  block: BlockList;
  /** Prefix length on a 128-bit scale, so IPv4 and IPv6 entries compare. */
  specificity: number;
  value: T;
}

/** Maps addresses and CIDR blocks (IPv4 or IPv6) to values; the most specific match wins. */
export class AddressTable<T> {
  private readonly entries: Entry<T>[] = [];

  /** Throws on an address that is not an IP or CIDR: a configuration error, found at startup. */
  add(address: string, value: T): void {
    const [addr, bits, extra] = address.split('/');
    const family = isIP(addr ?? '');
    const max = family === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : /^\d+$/.test(bits) ? Number(bits) : NaN;
    if (!family || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
      throw new Error(`not an IP address or CIDR block: ${address}`);
    }
    const block = new BlockList();
    block.addSubnet(addr!, prefix, family === 4 ? 'ipv4' : 'ipv6');
    this.entries.push({ block, specificity: family === 4 ? prefix + 96 : prefix, value });
    this.entries.sort((a, b) => b.specificity - a.specificity);
  }

  lookup(address: string): T | undefined {
    const ip = normaliseAddress(address);
    const family = isIP(ip);
    if (!family) return undefined;
    return this.entries.find((e) => e.block.check(ip, family === 4 ? 'ipv4' : 'ipv6'))?.value;
  }

  get size(): number {
    return this.entries.length;
  }
}
