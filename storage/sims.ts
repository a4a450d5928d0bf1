import type Database from 'better-sqlite3';
import { sameDevice } from '../lib/ids.ts';
import { onlineSql } from './activity.ts';
import type { Db } from './db.ts';

export type SimStatus = 'active' | 'suspended' | 'terminated';

export interface Sim {
  imsi: string;
  iccid: string | null;
  msisdn: string | null;
  group: string;
  status: SimStatus;
  boundImei: string | null;
  lockMode: string | null;
  thingName: string;
  tags: Record<string, string>;
  /** scrypt hash of the SIM's secret, if one is set. */
  secretHash: string | null;
  createdAt: number;
  lastSeenAt: number | null;
  /** First delivery upstream of a message the device sent, since its IMEI was last bound. */
  deliveredAt: number | null;
}

export interface SimRow {
  imsi: string;
  iccid: string | null;
  msisdn: string | null;
  group_name: string;
  status: SimStatus;
  bound_imei: string | null;
  lock_mode: string | null;
  thing_name: string;
  tags: string;
  secret_hash: string | null;
  created_at: number;
  last_seen_at: number | null;
  delivered_at: number | null;
}

/** Fleet listing filters; every one given must hold. */
export interface SimFilter {
  group?: string;
  status?: SimStatus;
  /** Bound to an IMEI (true) or not (false). */
  bound?: boolean;
  online?: boolean;
  /** A tag that must be present with this value. */
  tag?: { key: string; value: string };
  /** Digits found anywhere in the IMSI, ICCID or MSISDN. */
  q?: string;
}

export interface SimListItem extends Sim {
  online: boolean;
}

/** Changes to one SIM; absent fields stay as they are. */
export interface SimPatch {
  group?: string;
  tags?: Record<string, string>;
  status?: SimStatus;
  lockMode?: string | null;
}

/** One row of an import, already validated; absent optional fields leave the stored values alone. */
export interface SimImportRow {
  imsi: string;
  group: string;
  thingName: string;
  iccid?: string;
  msisdn?: string;
  imei?: string;
  tags?: Record<string, string>;
  /** Hash of a new secret (storage/secret-hash.ts); absent keeps the stored one. */
  secretHash?: string;
}

export type ImportOutcome =
  | { result: 'created' | 'updated' | 'unchanged'; imeiBound?: { imei: string; previous: string | null }; secretSet?: boolean }
  | { result: 'failed'; field: string; message: string };

export type BindOutcome =
  | { outcome: 'bound' | 'unchanged'; sim: Sim; previous: string | null }
  | { outcome: 'conflict' | 'terminated'; sim: Sim }
  | { outcome: 'not_found' };

const ONLINE_SQL = onlineSql('s');

/** A SIM from its row, as both dialects return it. */
export function fromRow(r: SimRow): Sim {
  return {
    imsi: r.imsi,
    iccid: r.iccid,
    msisdn: r.msisdn,
    group: r.group_name,
    status: r.status,
    boundImei: r.bound_imei,
    lockMode: r.lock_mode,
    thingName: r.thing_name,
    tags: JSON.parse(r.tags) as Record<string, string>,
    secretHash: r.secret_hash,
    createdAt: r.created_at,
    lastSeenAt: r.last_seen_at,
    deliveredAt: r.delivered_at ?? null,
  };
}

const ROUTING_CACHE_MAX = 100_000;

/** A SIM to create; absent optional fields stay empty. */
export interface NewSim {
  imsi: string;
  group: string;
  thingName: string;
  iccid?: string;
  msisdn?: string;
  boundImei?: string;
  tags?: Record<string, string>;
}

/**
 * The SIM registry as admin, vending, the CLI and admission's writes see it: promise-shaped, so a
 * PostgreSQL store can stand beside the SQLite one. The per-message path reads SimRouting instead.
 */
export interface SimRegistry {
  get(imsi: string): Promise<Sim | undefined>;
  /** Creates the SIM unless it exists; the stored record and whether it was new. */
  register(sim: NewSim): Promise<{ sim: Sim; created: boolean }>;
  /** Binds (or with null unbinds) an IMEI; with onlyIfUnbound only when none is bound yet. False when nothing changed. */
  bindImei(imsi: string, imei: string | null, onlyIfUnbound?: boolean): Promise<boolean>;
  /** Binds unless bound to another device (compared on TAC+SNR) without force, or terminated. */
  bindImeiChecked(imsi: string, imei: string, force: boolean): Promise<BindOutcome>;
  setLockMode(imsi: string, mode: string | null): Promise<boolean>;
  setSecretHash(imsi: string, hash: string | null): Promise<boolean>;
  setStatus(imsi: string, status: SimStatus): Promise<boolean>;
  /** Applies a patch; the SIM as stored afterwards, or undefined if there is none. */
  update(imsi: string, patch: SimPatch): Promise<Sim | undefined>;
  /** Creates or updates many SIMs in one transaction; onRow runs inside it, once per row. */
  upsertMany(
    rows: SimImportRow[],
    opts: { force: boolean; dryRun?: boolean; now?: number; onRow?(row: SimImportRow, outcome: ImportOutcome): void },
  ): Promise<ImportOutcome[]>;
  /** One page in IMSI order, keyset-paged by `after`; `onlineSince` is the oldest activity that counts. */
  list(filter: SimFilter, page: { limit: number; after?: string; onlineSince: number }): Promise<{ items: SimListItem[]; total: number; next: string | null }>;
  /** Per group and status: how many, bound and online. */
  counts(onlineSince: number): Promise<Array<{ group: string; status: SimStatus; total: number; bound: number; online: number }>>;
  isOnline(imsi: string, onlineSince: number): Promise<boolean>;
  /** From what an installer reads off a card: a whole IMSI or ICCID, or the last digits of IMSI, ICCID or MSISDN. */
  search(digits: string, limit?: number): Promise<Sim[]>;
}

/** The SIM as the per-message path reads it: from memory, synchronously; callers must not modify it. */
export interface SimRouting {
  forRouting(imsi: string): Sim | undefined;
}

/**
 * The SIM registry as the per-message path and the delivery loop use it: synchronous, from memory. On
 * SQLite it is SimStore itself; on PostgreSQL a node-wide cache kept fresh by the other nodes' notices.
 */
export interface SimRoutingStore extends SimRouting {
  get(imsi: string): Sim | undefined;
  /** Notes the SIM's first delivery upstream since its IMEI was bound (written in the background where it must be). */
  markDelivered(imsi: string, at?: number): void;
  /** Where markDelivered writes, when not on this store's own connection (SimStore.writeDeliveredWith). */
  writeDeliveredWith?(write: (imsi: string, at: number, boundImei: string | null) => void): void;
  /** Fills the cache at start-up; returns how many SIMs it read. */
  warmRoutingCache(): number;
}

export const SIM_REGISTRY_METHODS = [
  'get',
  'register',
  'bindImei',
  'bindImeiChecked',
  'setLockMode',
  'setSecretHash',
  'setStatus',
  'update',
  'upsertMany',
  'list',
  'counts',
  'isOnline',
  'search',
] as const satisfies ReadonlyArray<keyof SimRegistry>;

/**
 * The SIM registry. Build one per process and share it (the composition root does): its routing cache
 * is cleared by every write through it, so a suspended or rebound SIM is seen at once by the
 * per-message path, which another SimStore's writes would not do.
 */
export class SimStore implements SimRoutingStore {
  /**
   * SIMs as the per-message path reads them (admission, delivery). lastSeenAt in it may be old (the
   * outbox writer sets that column on another connection).
   */
  private readonly routing = new Map<string, Sim>();
  private readonly getStmt;
  private readonly insertStmt;
  private readonly seenStmt;
  private readonly deliveredStmt;
  private writeDelivered: ((imsi: string, at: number, boundImei: string | null) => void) | undefined;

  constructor(private readonly db: Db) {
    this.getStmt = db.prepare('SELECT * FROM sims WHERE imsi = ?');
    this.insertStmt = db.prepare(
      `INSERT INTO sims (imsi, iccid, msisdn, group_name, status, bound_imei, thing_name, tags, created_at)
       VALUES (@imsi, @iccid, @msisdn, @group, 'active', @boundImei, @thingName, @tags, @now)
       ON CONFLICT (imsi) DO NOTHING`,
    );
    this.seenStmt = db.prepare('UPDATE sims SET last_seen_at = ? WHERE imsi = ?');
    this.deliveredStmt = db.prepare('UPDATE sims SET delivered_at = ? WHERE imsi = ? AND delivered_at IS NULL');
  }

  get(imsi: string): Sim | undefined {
    const row = this.getStmt.get(imsi) as SimRow | undefined;
    return row && fromRow(row);
  }

  /**
   * The SIM for the per-message path, from memory when possible: a read on every message costs more
   * than the message (SQLite drops a connection's page cache whenever another connection commits, and
   * the outbox writer commits all the time). Callers must not modify the record.
   */
  forRouting(imsi: string): Sim | undefined {
    const cache = this.routing;
    const hit = cache.get(imsi);
    if (hit) return hit;
    const sim = this.get(imsi);
    if (sim) {
      if (cache.size >= ROUTING_CACHE_MAX) cache.clear();
      cache.set(imsi, sim);
    }
    return sim;
  }

  /**
   * Fills the routing cache with active SIMs in one read (at start-up), so a fleet arriving at once is
   * not looked up one SIM at a time while the gateway is still cold.
   */
  warmRoutingCache(): number {
    const cache = this.routing;
    const rows = this.db.prepare("SELECT * FROM sims WHERE status = 'active' LIMIT ?").all(ROUTING_CACHE_MAX - cache.size) as SimRow[];
    for (const row of rows) if (!cache.has(row.imsi)) cache.set(row.imsi, fromRow(row));
    return rows.length;
  }

  /** Called by every write: cached records may be out of date. */
  private changed(): void {
    this.routing.clear();
  }

  /** Creates the SIM unless it exists; returns the stored record and whether it was new. */
  register(sim: NewSim): { sim: Sim; created: boolean } {
    const info = this.insertStmt.run({
      imsi: sim.imsi,
      iccid: sim.iccid ?? null,
      msisdn: sim.msisdn ?? null,
      group: sim.group,
      boundImei: sim.boundImei ?? null,
      thingName: sim.thingName,
      tags: JSON.stringify(sim.tags ?? {}),
      now: Date.now(),
    });
    return { sim: this.get(sim.imsi)!, created: info.changes === 1 };
  }

  markSeen(imsi: string, at = Date.now()): void {
    this.seenStmt.run(at, imsi);
  }

  /**
   * Notes that a message of the SIM reached IoT Core, once per binding (a rebind clears it: migration
   * 008). Only this SIM's cached record changes: clearing the whole routing cache on every first delivery
   * would make a first-contact wave read every SIM again.
   */
  markDelivered(imsi: string, at = Date.now()): void {
    if (this.writeDelivered) {
      // Written with the outbox's next commit, only where still empty and for the binding seen here.
      const sim = this.forRouting(imsi);
      if (!sim) return;
      if (sim.deliveredAt === null) this.routing.set(imsi, { ...sim, deliveredAt: at });
      return this.writeDelivered(imsi, at, sim.boundImei ?? null);
    }
    if (this.deliveredStmt.run(at, imsi).changes === 0) return;
    const cached = this.routing.get(imsi);
    if (cached) this.routing.set(imsi, { ...cached, deliveredAt: at });
  }

  /**
   * Writes first deliveries through `write` from now on (the outbox writer's thread: the composition root
   * wires it). A write here is a commit of its own on the event loop's connection, which with
   * synchronous=FULL waits for the disk: one per SIM of a fleet reaching IoT Core for the first time.
   */
  writeDeliveredWith(write: (imsi: string, at: number, boundImei: string | null) => void): void {
    this.writeDelivered = write;
  }

  /**
   * Binds the SIM to an IMEI. With onlyIfUnbound the bind happens only when no IMEI is bound yet, in one
   * statement, so two first contacts at once cannot both bind.
   */
  bindImei(imsi: string, imei: string | null, onlyIfUnbound = false): boolean {
    const sql = onlyIfUnbound ? 'UPDATE sims SET bound_imei = ? WHERE imsi = ? AND bound_imei IS NULL' : 'UPDATE sims SET bound_imei = ? WHERE imsi = ?';
    this.changed();
    return this.db.prepare(sql).run(imei, imsi).changes === 1;
  }

  setLockMode(imsi: string, mode: string | null): boolean {
    this.changed();
    return this.db.prepare('UPDATE sims SET lock_mode = ? WHERE imsi = ?').run(mode, imsi).changes === 1;
  }

  setSecretHash(imsi: string, hash: string | null): boolean {
    this.changed();
    return this.db.prepare('UPDATE sims SET secret_hash = ? WHERE imsi = ?').run(hash, imsi).changes === 1;
  }

  setStatus(imsi: string, status: SimStatus): boolean {
    this.changed();
    return this.db.prepare('UPDATE sims SET status = ? WHERE imsi = ?').run(status, imsi).changes === 1;
  }

  /**
   * One page of SIMs matching the filter, in IMSI order; `after` is the last IMSI of the previous page
   * (keyset paging: stable while SIMs are added, and no OFFSET scan). `onlineSince` is the oldest activity
   * that still counts as online.
   */
  list(filter: SimFilter, page: { limit: number; after?: string; onlineSince: number }): { items: SimListItem[]; total: number; next: string | null } {
    const where: string[] = [];
    const args: Record<string, unknown> = { onlineSince: page.onlineSince };
    if (filter.group !== undefined) (where.push('s.group_name = @group'), (args.group = filter.group));
    if (filter.status !== undefined) (where.push('s.status = @status'), (args.status = filter.status));
    if (filter.bound !== undefined) where.push(filter.bound ? 's.bound_imei IS NOT NULL' : 's.bound_imei IS NULL');
    if (filter.online !== undefined) where.push(filter.online ? ONLINE_SQL : `NOT ${ONLINE_SQL}`);
    if (filter.tag) {
      where.push("json_extract(s.tags, '$.' || json_quote(@tagKey)) = @tagValue");
      args.tagKey = filter.tag.key;
      args.tagValue = filter.tag.value;
    }
    if (filter.q) {
      where.push("(instr(s.imsi, @q) > 0 OR instr(coalesce(s.iccid, ''), @q) > 0 OR instr(coalesce(s.msisdn, ''), @q) > 0)");
      args.q = filter.q;
    }
    const total = this.db.prepare(`SELECT count(*) FROM sims s ${where.length ? 'WHERE ' + where.join(' AND ') : ''}`).pluck().get(args) as number;
    if (page.after !== undefined) (where.push('s.imsi > @after'), (args.after = page.after));
    const rows = this.db
      .prepare(`SELECT s.*, ${ONLINE_SQL} AS online FROM sims s ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY s.imsi LIMIT @limit`)
      .all({ ...args, limit: page.limit + 1 }) as Array<SimRow & { online: number }>;
    const more = rows.length > page.limit;
    const items = rows.slice(0, page.limit).map((r) => ({ ...fromRow(r), online: r.online === 1 }));
    return { items, total, next: more ? items.at(-1)!.imsi : null };
  }

  /** Counts per group and status, with how many are bound and online (see list for online). */
  counts(onlineSince: number): Array<{ group: string; status: SimStatus; total: number; bound: number; online: number }> {
    return this.db
      .prepare(
        `SELECT s.group_name AS "group", s.status, count(*) AS total, count(s.bound_imei) AS bound, sum(${ONLINE_SQL}) AS online
         FROM sims s GROUP BY s.group_name, s.status ORDER BY s.group_name, s.status`,
      )
      .all({ onlineSince }) as Array<{ group: string; status: SimStatus; total: number; bound: number; online: number }>;
  }

  /** Whether a SIM counts as online (storage/activity.ts onlineSql: the one rule). */
  isOnline(imsi: string, onlineSince: number): boolean {
    return this.db.prepare(`SELECT ${ONLINE_SQL} FROM sims s WHERE s.imsi = @imsi`).pluck().get({ imsi, onlineSince }) === 1;
  }

  /**
   * Finds SIMs from what an installer can read off a card: a whole IMSI or ICCID, or the last digits of
   * the IMSI, ICCID or MSISDN. Exact matches come first.
   */
  search(digits: string, limit = 10): Sim[] {
    const rows = this.db
      .prepare(
        `SELECT * FROM sims WHERE imsi = @d OR iccid = @d OR substr(imsi, -length(@d)) = @d
           OR substr(coalesce(iccid, ''), -length(@d)) = @d OR substr(coalesce(msisdn, ''), -length(@d)) = @d
         ORDER BY (imsi = @d OR iccid = @d) DESC, imsi LIMIT @limit`,
      )
      .all({ d: digits, limit }) as SimRow[];
    return rows.map(fromRow);
  }

  /** Applies a patch; returns the SIM as stored afterwards, or undefined if there is no such SIM. */
  update(imsi: string, patch: SimPatch): Sim | undefined {
    const sets: string[] = [];
    const args: Record<string, unknown> = { imsi };
    if (patch.group !== undefined) (sets.push('group_name = @group'), (args.group = patch.group));
    if (patch.tags !== undefined) (sets.push('tags = @tags'), (args.tags = JSON.stringify(patch.tags)));
    if (patch.status !== undefined) (sets.push('status = @status'), (args.status = patch.status));
    if (patch.lockMode !== undefined) (sets.push('lock_mode = @lockMode'), (args.lockMode = patch.lockMode));
    if (sets.length) this.db.prepare(`UPDATE sims SET ${sets.join(', ')} WHERE imsi = @imsi`).run(args);
    this.changed();
    return this.get(imsi);
  }

  /**
   * Binds the IMEI unless the SIM is bound to another device (compared on TAC+SNR) and force is not set,
   * or the SIM is terminated. Read and write happen in one transaction, so two installers cannot both win.
   */
  bindImeiChecked(imsi: string, imei: string, force: boolean): BindOutcome {
    return this.db
      .transaction((): BindOutcome => {
        const sim = this.get(imsi);
        if (!sim) return { outcome: 'not_found' };
        if (sim.status === 'terminated') return { outcome: 'terminated', sim };
        if (sim.boundImei && sameDevice(sim.boundImei, imei)) return { outcome: 'unchanged', sim, previous: sim.boundImei };
        if (sim.boundImei && !sameDevice(sim.boundImei, imei) && !force) return { outcome: 'conflict', sim };
        this.db.prepare('UPDATE sims SET bound_imei = ? WHERE imsi = ?').run(imei, imsi);
        this.changed();
        return { outcome: 'bound', sim: { ...sim, boundImei: imei }, previous: sim.boundImei };
      })
      .immediate();
  }

  /**
   * Creates or updates many SIMs in one transaction (the caller batches; one commit per row would cap an
   * import at a few thousand rows a second). Re-importing the same rows changes nothing. Thing names are
   * set on creation only: a vended certificate belongs to the thing it was made for.
   */
  upsertMany(
    rows: SimImportRow[],
    opts: { force: boolean; dryRun?: boolean; now?: number; onRow?(row: SimImportRow, outcome: ImportOutcome): void },
  ): ImportOutcome[] {
    const now = opts.now ?? Date.now();
    this.changed();
    const tx = this.db.transaction(() => {
      const outcomes = rows.map((row) => {
        const outcome = this.upsertOne(row, opts.force, now);
        opts.onRow?.(row, outcome);
        return outcome;
      });
      // A dry run does all the work, then rolls it back: the answers are exactly what a real run gives.
      if (opts.dryRun) throw new DryRun(outcomes);
      return outcomes;
    });
    try {
      return tx.immediate();
    } catch (err) {
      if (err instanceof DryRun) return err.outcomes;
      throw err;
    }
  }

  private upsertOne(row: SimImportRow, force: boolean, now: number): ImportOutcome {
    const st = this.importStatements();
    if (row.iccid) {
      const holder = st.byIccid.get(row.iccid) as string | undefined;
      if (holder !== undefined && holder !== row.imsi) return { result: 'failed', field: 'iccid', message: `ICCID already belongs to SIM ${holder}` };
    }
    const existing = st.get.get(row.imsi) as SimRow | undefined;
    if (!existing) {
      try {
        st.insert.run(row.imsi, row.iccid ?? null, row.msisdn ?? null, row.group, row.imei ?? null, row.thingName, JSON.stringify(row.tags ?? {}), row.secretHash ?? null, now);
      } catch (err) {
        return { result: 'failed', field: 'imsi', message: constraintMessage(err) };
      }
      return createdOutcome(row);
    }
    const change = importChange(fromRow(existing), existing.tags, row, force);
    if (!change.next) return change.outcome;
    const { next } = change;
    try {
      st.update.run(next.iccid, next.msisdn, next.group, next.imei, next.tags, next.secretHash, row.imsi);
    } catch (err) {
      return { result: 'failed', field: 'iccid', message: constraintMessage(err) };
    }
    return change.outcome;
  }

  private imports?: { get: Database.Statement; byIccid: Database.Statement; insert: Database.Statement; update: Database.Statement };

  private importStatements() {
    // Positional parameters: better-sqlite3 binds named ones noticeably slower, and imports are hot loops.
    return (this.imports ??= {
      get: this.db.prepare('SELECT * FROM sims WHERE imsi = ?'),
      byIccid: this.db.prepare('SELECT imsi FROM sims WHERE iccid = ?').pluck(),
      insert: this.db.prepare(
        `INSERT INTO sims (imsi, iccid, msisdn, group_name, status, bound_imei, thing_name, tags, secret_hash, created_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?)`,
      ),
      update: this.db.prepare('UPDATE sims SET iccid = ?, msisdn = ?, group_name = ?, bound_imei = ?, tags = ?, secret_hash = ? WHERE imsi = ?'),
    });
  }
}

class DryRun extends Error {
  constructor(readonly outcomes: ImportOutcome[]) {
    super('dry run');
  }
}

function constraintMessage(err: unknown): string {
  const msg = (err as Error).message ?? String(err);
  if (msg.includes('sims.thing_name')) return 'thing name already used by another SIM (check the vending.thingName template)';
  if (msg.includes('sims.iccid')) return 'ICCID already belongs to another SIM';
  return msg;
}

/** What importing a row that creates its SIM reports. */
export function createdOutcome(row: SimImportRow): ImportOutcome {
  return { result: 'created', imeiBound: row.imei ? { imei: row.imei, previous: null } : undefined, secretSet: row.secretHash !== undefined };
}

/** The columns an import writes to a SIM that exists. */
export interface ImportedColumns {
  iccid: string | null;
  msisdn: string | null;
  group: string;
  imei: string | null;
  tags: string;
  secretHash: string | null;
}

/**
 * What importing a row does to a SIM that exists, for every dialect: refused, unchanged, or the columns
 * to write and the outcome to report once they are written. `storedTags` is the tags column as stored.
 */
export function importChange(cur: Sim, storedTags: string, row: SimImportRow, force: boolean): { outcome: ImportOutcome; next?: ImportedColumns } {
  if (row.imei && cur.boundImei && !sameDevice(cur.boundImei, row.imei)) {
    if (cur.status === 'terminated') return { outcome: { result: 'failed', field: 'imei', message: 'SIM is terminated; its IMEI binding cannot change' } };
    if (!force) return { outcome: { result: 'failed', field: 'imei', message: `SIM is bound to another IMEI (${cur.boundImei}); import with force to replace it` } };
  }
  const next: ImportedColumns = {
    iccid: row.iccid ?? cur.iccid,
    msisdn: row.msisdn ?? cur.msisdn,
    group: row.group,
    // The same device under another spelling (spare 0, IMEISV) keeps the stored IMEI.
    imei: row.imei && !(cur.boundImei && sameDevice(cur.boundImei, row.imei)) ? row.imei : cur.boundImei,
    tags: JSON.stringify(row.tags ?? cur.tags),
    secretHash: row.secretHash ?? cur.secretHash,
  };
  const unchanged =
    next.iccid === cur.iccid &&
    next.msisdn === cur.msisdn &&
    next.group === cur.group &&
    next.imei === cur.boundImei &&
    next.tags === storedTags &&
    next.secretHash === cur.secretHash;
  if (unchanged) return { outcome: { result: 'unchanged' } };
  return {
    next,
    outcome: {
      result: 'updated',
      imeiBound: next.imei !== cur.boundImei && next.imei ? { imei: next.imei, previous: cur.boundImei } : undefined,
      secretSet: next.secretHash !== cur.secretHash,
    },
  };
}
