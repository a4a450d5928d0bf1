import { describe, expect, it } from 'vitest';
import { AddressTable } from '../lib/address-table.ts';

describe('AddressTable', () => {
  it('finds single addresses by any spelling and prefers them to the blocks that contain them', () => {
    const t = new AddressTable<string>();
    t.add('10.0.0.0/8', 'block');
    t.add('10.1.2.3', 'host');
    t.add('10.1.0.0/16', 'narrower block');
    t.add('2001:db8::1', 'v6 host');
    t.add('2001:db8::/32', 'v6 block');
    expect(t.lookup('10.1.2.3')).toBe('host');
    expect(t.lookup('::ffff:10.1.2.3')).toBe('host');
    expect(t.lookup('10.1.2.4')).toBe('narrower block');
    expect(t.lookup('10.9.9.9')).toBe('block');
    expect(t.lookup('11.0.0.1')).toBeUndefined();
    expect(t.lookup('2001:DB8:0:0::1')).toBe('v6 host');
    expect(t.lookup('2001:db8::2')).toBe('v6 block');
    expect(t.lookup('not an address')).toBeUndefined();
    expect(t.size).toBe(5);
  });

  it('answers from a table of thousands of single addresses without scanning them', () => {
    const t = new AddressTable<number>();
    for (let i = 0; i < 5000; i++) t.add(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, i);
    const started = performance.now();
    let found = 0;
    for (let n = 0; n < 100_000; n++) if (t.lookup(`10.0.${(n >> 8) % 19}.${n & 255}`) !== undefined) found++;
    expect(found).toBe(100_000);
    // A scan of 5,000 BlockLists per lookup takes seconds here; a map lookup, milliseconds.
    expect(performance.now() - started).toBeLessThan(1000);
  });
});
