/**
 * Connections by a key (SIM, source address). Nearly every key has exactly one connection, held as it
 * is: only a key with several gets a Set, so an idle device does not cost a hash table of its own.
 */
export class ConnectionIndex<T extends object> {
  private readonly byKey = new Map<string, T | Set<T>>();

  add(key: string, item: T): void {
    const held = this.byKey.get(key);
    if (held === undefined) this.byKey.set(key, item);
    else if (held instanceof Set) held.add(item);
    else if (held !== item) this.byKey.set(key, new Set([held, item]));
  }

  /** Removes the item under the key; false when it was not there. */
  delete(key: string, item: T): boolean {
    const held = this.byKey.get(key);
    if (held === item) return this.byKey.delete(key);
    if (!(held instanceof Set) || !held.delete(item)) return false;
    if (held.size === 1) this.byKey.set(key, held.values().next().value as T);
    return true;
  }

  has(key: string): boolean {
    return this.byKey.has(key);
  }

  /** The items under the key (a copy: safe to change the index while going through it). */
  list(key: string): T[] {
    const held = this.byKey.get(key);
    if (held === undefined) return [];
    return held instanceof Set ? [...held] : [held];
  }

  count(key: string): number {
    const held = this.byKey.get(key);
    if (held === undefined) return 0;
    return held instanceof Set ? held.size : 1;
  }
}
