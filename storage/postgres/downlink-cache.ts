import type { HeldDownlinkStore, HeldMessage } from '../downlink.ts';
import { batched, CHANNELS, type ChangeFeed } from './changes.ts';
import type { Pool } from './connect.ts';
import type { PgDownlinkStore } from './downlink.ts';

type Cached = HeldMessage & { expiresAt: number };
const COLUMNS = 'imsi, id, topic, payload, qos, received_at AS "receivedAt", expires_at AS "expiresAt"';

/**
 * Downlink held for HTTP devices, with pending() answered from this node's memory: the HTTP and
 * datagram listeners read it on every request, synchronously. Held messages are few (bounded per device
 * and in age); the table is read whole at start, a device's messages again when any node holds or
 * removes one (migration 010's trigger), and all after the change feed reconnects.
 */
export class PgDownlinkCache implements HeldDownlinkStore {
  private held = new Map<string, Cached[]>();

  constructor(
    private readonly pool: Pool,
    private readonly store: PgDownlinkStore,
    feed: ChangeFeed,
    onError: (err: unknown) => void,
  ) {
    feed.on(CHANNELS.downlink, batched((imsis) => this.refresh(imsis), onError));
    feed.onResync(() => this.load());
  }

  async load(): Promise<void> {
    const { rows } = await this.pool.query<Cached & { imsi: string }>(`SELECT ${COLUMNS} FROM downlink ORDER BY id`);
    const held = new Map<string, Cached[]>();
    for (const { imsi, ...m } of rows) held.set(imsi, [...(held.get(imsi) ?? []), m]);
    this.held = held;
  }

  async refresh(imsis: string[]): Promise<void> {
    if (imsis.length === 0) return;
    const { rows } = await this.pool.query<Cached & { imsi: string }>(`SELECT ${COLUMNS} FROM downlink WHERE imsi = ANY($1::text[]) ORDER BY id`, [imsis]);
    for (const imsi of imsis) this.held.delete(imsi);
    for (const { imsi, ...m } of rows) this.held.set(imsi, [...(this.held.get(imsi) ?? []), m]);
  }

  async hold(imsi: string, msg: Omit<HeldMessage, 'id'>, maxMessages: number, ttlMs: number): Promise<HeldMessage[]> {
    const over = await this.store.hold(imsi, msg, maxMessages, ttlMs);
    await this.refresh([imsi]);
    return over;
  }

  pending(imsi: string, now = Date.now()): HeldMessage[] {
    const list = this.held.get(imsi);
    if (!list) return [];
    return list.filter((m) => m.expiresAt > now).map(({ expiresAt: _, ...m }) => m);
  }

  async remove(ids: number[]): Promise<void> {
    // Gone from memory at once: the next request of the device must not get them again.
    const gone = new Set(ids);
    for (const [imsi, list] of this.held) {
      const left = list.filter((m) => !gone.has(m.id));
      if (left.length === 0) this.held.delete(imsi);
      else if (left.length !== list.length) this.held.set(imsi, left);
    }
    await this.store.remove(ids);
  }

  async expire(now = Date.now()): Promise<Array<HeldMessage & { imsi: string }>> {
    const gone = await this.store.expire(now);
    await this.refresh([...new Set(gone.map((m) => m.imsi))]);
    return gone;
  }
}
