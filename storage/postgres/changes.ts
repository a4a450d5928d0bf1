import pg from 'pg';
import { pgTypes } from './connect.ts';

/** The channels migration 010's triggers (and the outbox's commit, and queued events) notify on; the payload is the row's key. */
export const CHANNELS = {
  sims: 'simbridge_sims',
  sessions: 'simbridge_sessions',
  downlink: 'simbridge_downlink',
  outbox: 'simbridge_outbox',
  leases: 'simbridge_leases',
  /** The gateway's lifecycle events were committed (storage/postgres/events.ts); the payload is their outbox key. */
  events: 'simbridge_events',
} as const;
export type Channel = (typeof CHANNELS)[keyof typeof CHANNELS];

/**
 * Changes other nodes (and this one) make, heard over one dedicated connection (LISTEN/NOTIFY), so a
 * node's caches of shared tables stay fresh without a query per message. A notice sent while this
 * connection was down is lost: after every reconnect the `resync` handlers run, and each cache reloads
 * whole. `connected` says whether the database is reachable right now (readiness).
 */
export class ChangeFeed {
  private client: pg.Client | undefined;
  private readonly handlers = new Map<string, Array<(payload: string) => void>>();
  private readonly resyncs: Array<() => Promise<void>> = [];
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  connected = false;

  constructor(
    private readonly url: string,
    private readonly reconnectMs = 1000,
  ) {}

  on(channel: Channel, fn: (payload: string) => void): void {
    const list = this.handlers.get(channel) ?? [];
    list.push(fn);
    this.handlers.set(channel, list);
  }

  /** Runs after every reconnect (not the first connect): notices may have been missed meanwhile. */
  onResync(fn: () => Promise<void>): void {
    this.resyncs.push(fn);
  }

  /** Connects and listens; rejects when the first connection fails. */
  async start(): Promise<void> {
    await this.connect();
  }

  private async connect(): Promise<void> {
    const client = new pg.Client({ connectionString: this.url, types: pgTypes });
    client.on('notification', (n) => {
      for (const fn of this.handlers.get(n.channel) ?? []) fn(n.payload ?? '');
    });
    const lost = () => {
      if (this.client !== client) return;
      this.client = undefined;
      this.connected = false;
      client.end().catch(() => undefined);
      this.scheduleReconnect();
    };
    client.on('error', lost);
    client.on('end', lost);
    await client.connect();
    for (const channel of Object.values(CHANNELS)) await client.query(`LISTEN ${channel}`);
    this.client = client;
    this.connected = true;
  }

  private scheduleReconnect(): void {
    if (this.closed || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.connect().then(
        () => Promise.all(this.resyncs.map((fn) => fn().catch(() => undefined))),
        () => this.scheduleReconnect(),
      );
    }, this.reconnectMs);
    this.retry.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    const client = this.client;
    this.client = undefined;
    this.connected = false;
    await client?.end().catch(() => undefined);
  }
}

/**
 * Gathers keys named by notices and refreshes them together on the next turn of the event loop: a burst
 * of changes (an import, a RADIUS batch) costs one query, not one per row.
 */
export function batched(refresh: (keys: string[]) => Promise<void>, onError: (err: unknown) => void): (key: string) => void {
  let due: Set<string> | undefined;
  return (key) => {
    if (due) return void due.add(key);
    due = new Set([key]);
    setImmediate(() => {
      const keys = [...due!];
      due = undefined;
      refresh(keys).catch(onError);
    });
  };
}
