import { fromRow, type Sim, type SimRegistry, type SimRoutingStore, type SimRow } from '../sims.ts';
import { batched, CHANNELS, type ChangeFeed } from './changes.ts';
import type { Pool } from './connect.ts';
import { COLUMNS, type PgSimStore } from './sims.ts';

/**
 * The SIM registry in this node's memory, for the per-message path: every SIM, read once at start, each
 * one read again when a node changes it (migration 010's trigger notifies on every change but the
 * per-message last-seen time), and all of them after the change feed reconnects. Writes through
 * `registry` (admin, admission, vending on this node) refresh the SIM before they resolve, so this node
 * reads its own writes at once; other nodes see them within a notice's trip.
 */
export class PgSimRouting implements SimRoutingStore {
  private sims = new Map<string, Sim>();
  /** IMSI by thing name (the upstream pool knows things, leases know SIMs). */
  private things = new Map<string, string>();
  /** The registry for everyone else: PgSimStore, each write followed by a refresh of what it changed. */
  readonly registry: SimRegistry;

  constructor(
    private readonly pool: Pool,
    private readonly store: PgSimStore,
    feed: ChangeFeed,
    private readonly onError: (err: unknown) => void,
  ) {
    feed.on(CHANNELS.sims, batched((imsis) => this.refresh(imsis), onError));
    feed.onResync(() => this.load());
    this.registry = this.refreshingRegistry();
  }

  /** Reads every SIM. */
  async load(): Promise<void> {
    const { rows } = await this.pool.query<SimRow>(`SELECT ${COLUMNS} FROM sims`);
    const sims = new Map<string, Sim>();
    const things = new Map<string, string>();
    for (const row of rows) {
      sims.set(row.imsi, fromRow(row));
      things.set(row.thing_name, row.imsi);
    }
    this.sims = sims;
    this.things = things;
  }

  /** Reads these SIMs again; one gone is forgotten. */
  async refresh(imsis: string[]): Promise<void> {
    if (imsis.length === 0) return;
    const { rows } = await this.pool.query<SimRow>(`SELECT ${COLUMNS} FROM sims WHERE imsi = ANY($1::text[])`, [imsis]);
    const found = new Set<string>();
    for (const row of rows) {
      found.add(row.imsi);
      this.sims.set(row.imsi, fromRow(row));
      this.things.set(row.thing_name, row.imsi);
    }
    for (const imsi of imsis) if (!found.has(imsi)) this.sims.delete(imsi);
  }

  forRouting(imsi: string): Sim | undefined {
    return this.sims.get(imsi);
  }

  get(imsi: string): Sim | undefined {
    return this.sims.get(imsi);
  }

  /** The SIM whose thing has this name. */
  byThing(thingName: string): Sim | undefined {
    const imsi = this.things.get(thingName);
    return imsi === undefined ? undefined : this.sims.get(imsi);
  }

  /** The first delivery since the IMEI was bound: noted in memory now, in the database in the background. */
  markDelivered(imsi: string, at = Date.now()): void {
    const cached = this.sims.get(imsi);
    if (cached && cached.deliveredAt === null) this.sims.set(imsi, { ...cached, deliveredAt: at });
    this.store.markDelivered(imsi, at).catch(this.onError);
  }

  warmRoutingCache(): number {
    return this.sims.size;
  }

  private refreshingRegistry(): SimRegistry {
    const s = this.store;
    const after = async <T>(imsis: string[], result: Promise<T>): Promise<T> => {
      const value = await result;
      await this.refresh(imsis);
      return value;
    };
    return {
      get: (imsi) => s.get(imsi),
      register: (sim) => after([sim.imsi], s.register(sim)),
      bindImei: (imsi, imei, only) => after([imsi], s.bindImei(imsi, imei, only)),
      bindImeiChecked: (imsi, imei, force) => after([imsi], s.bindImeiChecked(imsi, imei, force)),
      setLockMode: (imsi, mode) => after([imsi], s.setLockMode(imsi, mode)),
      setSecretHash: (imsi, hash) => after([imsi], s.setSecretHash(imsi, hash)),
      setStatus: (imsi, status) => after([imsi], s.setStatus(imsi, status)),
      update: (imsi, patch) => after([imsi], s.update(imsi, patch)),
      upsertMany: (rows, opts) => after(opts.dryRun ? [] : rows.map((r) => r.imsi), s.upsertMany(rows, opts)),
      list: (filter, page) => s.list(filter, page),
      counts: (since) => s.counts(since),
      isOnline: (imsi, since) => s.isOnline(imsi, since),
      search: (digits, limit) => s.search(digits, limit),
    };
  }
}
