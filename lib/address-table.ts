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
  /** Single addresses (/32, /128), the most specific entries there are: found by one map lookup. */
  private readonly hosts = new Map<string, T>();
  /** Wider blocks, most specific first: BlockList.check costs a SocketAddress per call, so only these are scanned. */
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
    if (prefix === max) {
      // One spelling per address (::1 and 0:0::1 alike), as lookup() normalises what it is given.
      this.hosts.set(canonical(addr!, family), value);
      return;
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
    const host = this.hosts.get(canonical(ip, family));
    if (host !== undefined) return host;
    return this.entries.find((e) => e.block.check(ip, family === 4 ? 'ipv4' : 'ipv6'))?.value;
  }

  get size(): number {
    return this.hosts.size + this.entries.length;
  }
}

/** An address in one spelling: IPv4 as given (isIP accepts only dotted quads), IPv6 through the URL parser (compressed, lower case). */
function canonical(address: string, family: number): string {
  if (family === 4) return address;
  try {
    return new URL(`http://[${address}]/`).hostname;
  } catch {
    return address.toLowerCase(); // a zone id (fe80::1%eth0) is not a URL host
  }
}
