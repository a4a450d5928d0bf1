import type pg from 'pg';
import { sameDevice } from '../../lib/ids.ts';
import { onlineSql } from '../activity.ts';
import { createdOutcome, fromRow, importChange, type SimRow, type BindOutcome, type ImportOutcome, type NewSim, type Sim, type SimFilter, type SimImportRow, type SimListItem, type SimPatch, type SimRegistry, type SimStatus } from '../sims.ts';
import { transaction, type Pool, type Queryable } from './connect.ts';
import { changed, Params } from './params.ts';

// An import reads and writes this many rows per round trip: one row per round trip made 10,000 SIMs take
// tens of seconds over the network.
const IMPORT_CHUNK = 1000;

// SQLSTATE of a unique constraint violation.
const UNIQUE_VIOLATION = '23505';

export const COLUMNS = 'imsi, iccid, msisdn, group_name, status, bound_imei, lock_mode, thing_name, tags, secret_hash, created_at, last_seen_at, delivered_at';

/**
 * The SIM registry on PostgreSQL, with the rules of storage/sims.ts (SimStore). It keeps no routing
 * cache: on several nodes a cache needs invalidation from the others (LISTEN/NOTIFY) first.
 */
export class PgSimStore implements SimRegistry {
  constructor(private readonly pool: Pool) {}

  async get(imsi: string, db: Queryable = this.pool): Promise<Sim | undefined> {
    const { rows } = await db.query<SimRow>(`SELECT ${COLUMNS} FROM sims WHERE imsi = $1`, [imsi]);
    return rows[0] && fromRow(rows[0]);
  }

  /**
   * ON CONFLICT (imsi) arbitrates the IMSI only. When several connections insert one new SIM at once, an
   * insert can pass that check before the other's row is in the IMSI index and then meet it on the thing
   * name (or ICCID) index, which raises a unique violation once the other commits. The SIM exists then:
   * this caller did not create it, as if the check had caught it. A violation that leaves no row for the
   * IMSI is a real one (a thing name or ICCID of another SIM) and is thrown, as on SQLite.
   */
  async register(sim: NewSim): Promise<{ sim: Sim; created: boolean }> {
    let created: boolean;
    try {
      const r = await this.pool.query(
        `INSERT INTO sims (imsi, iccid, msisdn, group_name, status, bound_imei, thing_name, tags, created_at)
         VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8) ON CONFLICT (imsi) DO NOTHING`,
        [sim.imsi, sim.iccid ?? null, sim.msisdn ?? null, sim.group, sim.boundImei ?? null, sim.thingName, JSON.stringify(sim.tags ?? {}), Date.now()],
      );
      created = changed(r) === 1;
    } catch (err) {
      if ((err as { code?: string }).code !== UNIQUE_VIOLATION) throw err;
      const existing = await this.get(sim.imsi);
      if (!existing) throw err;
      return { sim: existing, created: false };
    }
    return { sim: (await this.get(sim.imsi))!, created };
  }

  async markSeen(imsi: string, at = Date.now()): Promise<void> {
    await this.pool.query('UPDATE sims SET last_seen_at = $1 WHERE imsi = $2', [at, imsi]);
  }

  /** Notes that a message of the SIM reached IoT Core, once per binding (migration 008). */
  async markDelivered(imsi: string, at = Date.now()): Promise<void> {
    await this.pool.query('UPDATE sims SET delivered_at = $1 WHERE imsi = $2 AND delivered_at IS NULL', [at, imsi]);
  }

  async bindImei(imsi: string, imei: string | null, onlyIfUnbound = false): Promise<boolean> {
    const sql = `UPDATE sims SET bound_imei = $1 WHERE imsi = $2${onlyIfUnbound ? ' AND bound_imei IS NULL' : ''}`;
    return changed(await this.pool.query(sql, [imei, imsi])) === 1;
  }

  async setLockMode(imsi: string, mode: string | null): Promise<boolean> {
    return changed(await this.pool.query('UPDATE sims SET lock_mode = $1 WHERE imsi = $2', [mode, imsi])) === 1;
  }

  async setSecretHash(imsi: string, hash: string | null): Promise<boolean> {
    return changed(await this.pool.query('UPDATE sims SET secret_hash = $1 WHERE imsi = $2', [hash, imsi])) === 1;
  }

  async setStatus(imsi: string, status: SimStatus): Promise<boolean> {
    return changed(await this.pool.query('UPDATE sims SET status = $1 WHERE imsi = $2', [status, imsi])) === 1;
  }

  async list(filter: SimFilter, page: { limit: number; after?: string; onlineSince: number }): Promise<{ items: SimListItem[]; total: number; next: string | null }> {
    // Built twice: the count ignores `after` and the limit.
    const build = (paged: boolean) => {
      const p = new Params();
      // Added on first use: PostgreSQL refuses a parameter its query does not use.
      let since: string | undefined;
      const online = () => onlineSql('s', (since ??= p.add(page.onlineSince)));
      const where: string[] = [];
      if (filter.group !== undefined) where.push(`s.group_name = ${p.add(filter.group)}`);
      if (filter.status !== undefined) where.push(`s.status = ${p.add(filter.status)}`);
      if (filter.bound !== undefined) where.push(filter.bound ? 's.bound_imei IS NOT NULL' : 's.bound_imei IS NULL');
      if (filter.online !== undefined) where.push(filter.online ? online() : `NOT ${online()}`);
      if (filter.tag) where.push(`(s.tags::jsonb ->> ${p.add(filter.tag.key)}::text) = ${p.add(filter.tag.value)}::text`);
      if (filter.q) {
        const q = p.add(filter.q);
        where.push(`(strpos(s.imsi, ${q}::text) > 0 OR strpos(coalesce(s.iccid, ''), ${q}::text) > 0 OR strpos(coalesce(s.msisdn, ''), ${q}::text) > 0)`);
      }
      if (paged && page.after !== undefined) where.push(`s.imsi > ${p.add(page.after)}`);
      const clause = where.length ? 'WHERE ' + where.join(' AND ') : '';
      return paged
        ? { text: `SELECT ${COLUMNS}, ${online()} AS online FROM sims s ${clause} ORDER BY s.imsi LIMIT ${p.add(page.limit + 1)}`, values: p.values }
        : { text: `SELECT count(*) AS n FROM sims s ${clause}`, values: p.values };
    };
    const total = (await this.pool.query<{ n: number }>(build(false))).rows[0]!.n;
    const { rows } = await this.pool.query<SimRow & { online: boolean }>(build(true));
    const more = rows.length > page.limit;
    const items = rows.slice(0, page.limit).map((r) => ({ ...fromRow(r), online: r.online }));
    return { items, total, next: more ? items.at(-1)!.imsi : null };
  }

  async counts(onlineSince: number): Promise<Array<{ group: string; status: SimStatus; total: number; bound: number; online: number }>> {
    const { rows } = await this.pool.query(
      `SELECT s.group_name AS "group", s.status, count(*) AS total, count(s.bound_imei) AS bound, sum((${onlineSql('s', '$1')})::int) AS online
       FROM sims s GROUP BY s.group_name, s.status ORDER BY s.group_name, s.status`,
      [onlineSince],
    );
    return rows;
  }

  async isOnline(imsi: string, onlineSince: number): Promise<boolean> {
    const { rows } = await this.pool.query<{ online: boolean }>(`SELECT ${onlineSql('s', '$2')} AS online FROM sims s WHERE s.imsi = $1`, [imsi, onlineSince]);
    return rows[0]?.online === true;
  }

  async search(digits: string, limit = 10): Promise<Sim[]> {
    const { rows } = await this.pool.query<SimRow>(
      `SELECT ${COLUMNS} FROM sims WHERE imsi = $1 OR iccid = $1 OR right(imsi, length($1)) = $1
         OR right(coalesce(iccid, ''), length($1)) = $1 OR right(coalesce(msisdn, ''), length($1)) = $1
       ORDER BY coalesce(imsi = $1 OR iccid = $1, false) DESC, imsi LIMIT $2`,
      [digits, limit],
    );
    return rows.map(fromRow);
  }

  async update(imsi: string, patch: SimPatch): Promise<Sim | undefined> {
    const p = new Params();
    const sets: string[] = [];
    if (patch.group !== undefined) sets.push(`group_name = ${p.add(patch.group)}`);
    if (patch.tags !== undefined) sets.push(`tags = ${p.add(JSON.stringify(patch.tags))}`);
    if (patch.status !== undefined) sets.push(`status = ${p.add(patch.status)}`);
    if (patch.lockMode !== undefined) sets.push(`lock_mode = ${p.add(patch.lockMode)}`);
    if (sets.length) await this.pool.query(`UPDATE sims SET ${sets.join(', ')} WHERE imsi = ${p.add(imsi)}`, p.values);
    return this.get(imsi);
  }

  /** As SimStore.bindImeiChecked; the row is locked between read and write, so two installers cannot both win. */
  async bindImeiChecked(imsi: string, imei: string, force: boolean): Promise<BindOutcome> {
    return transaction(this.pool, async (c): Promise<BindOutcome> => {
      const { rows } = await c.query<SimRow>(`SELECT ${COLUMNS} FROM sims WHERE imsi = $1 FOR UPDATE`, [imsi]);
      const sim = rows[0] && fromRow(rows[0]);
      if (!sim) return { outcome: 'not_found' };
      if (sim.status === 'terminated') return { outcome: 'terminated', sim };
      if (sim.boundImei && sameDevice(sim.boundImei, imei)) return { outcome: 'unchanged', sim, previous: sim.boundImei };
      if (sim.boundImei && !force) return { outcome: 'conflict', sim };
      await c.query('UPDATE sims SET bound_imei = $1 WHERE imsi = $2', [imei, imsi]);
      return { outcome: 'bound', sim: { ...sim, boundImei: imei }, previous: sim.boundImei };
    });
  }

  /** As SimStore.upsertMany: one transaction; a dry run does all the work and rolls it back. */
  async upsertMany(
    rows: SimImportRow[],
    opts: { force: boolean; dryRun?: boolean; now?: number; onRow?(row: SimImportRow, outcome: ImportOutcome): void },
  ): Promise<ImportOutcome[]> {
    const now = opts.now ?? Date.now();
    try {
      return await transaction(this.pool, async (c) => {
        const outcomes: ImportOutcome[] = [];
        for (let i = 0; i < rows.length; i += IMPORT_CHUNK) {
          const chunk = rows.slice(i, i + IMPORT_CHUNK);
          const done = (await this.upsertChunk(c, chunk, opts.force, now)) ?? (await this.upsertOneByOne(c, chunk, opts.force, now));
          chunk.forEach((row, j) => opts.onRow?.(row, done[j]!));
          outcomes.push(...done);
        }
        if (opts.dryRun) throw new DryRun(outcomes);
        return outcomes;
      });
    } catch (err) {
      if (err instanceof DryRun) return err.outcomes;
      throw err;
    }
  }

  /**
   * A chunk of rows with two reads and at most two writes: the rows it touches are read at once, each row
   * is decided in memory in file order (as one by one would), and the result is written with one INSERT
   * and one UPDATE. A constraint the checks do not foresee rolls the chunk back: undefined, and the caller
   * imports it one row at a time, which says which row failed.
   */
  private async upsertChunk(c: pg.PoolClient, chunk: SimImportRow[], force: boolean, now: number): Promise<ImportOutcome[] | undefined> {
    const imsis = [...new Set(chunk.map((r) => r.imsi))];
    const iccids = [...new Set(chunk.flatMap((r) => (r.iccid ? [r.iccid] : [])))];
    const current = new Map((await c.query<SimRow>(`SELECT ${COLUMNS} FROM sims WHERE imsi = ANY($1)`, [imsis])).rows.map((r) => [r.imsi, r]));
    const holders = new Map((await c.query<{ iccid: string; imsi: string }>('SELECT iccid, imsi FROM sims WHERE iccid = ANY($1)', [iccids])).rows.map((r) => [r.iccid, r.imsi]));
    const inserts = new Map<string, SimRow>();
    const updates = new Map<string, SimRow>();
    const outcomes = chunk.map((row): ImportOutcome => {
      const holder = row.iccid ? holders.get(row.iccid) : undefined;
      if (holder !== undefined && holder !== row.imsi) return { result: 'failed', field: 'iccid', message: `ICCID already belongs to SIM ${holder}` };
      const cur = current.get(row.imsi);
      let next: SimRow;
      let outcome: ImportOutcome;
      if (!cur) {
        next = {
          imsi: row.imsi, iccid: row.iccid ?? null, msisdn: row.msisdn ?? null, group_name: row.group, status: 'active', bound_imei: row.imei ?? null, lock_mode: null,
          thing_name: row.thingName, tags: JSON.stringify(row.tags ?? {}), secret_hash: row.secretHash ?? null, created_at: now, last_seen_at: null, delivered_at: null,
        };
        inserts.set(row.imsi, next);
        outcome = createdOutcome(row);
      } else {
        const change = importChange(fromRow(cur), cur.tags, row, force);
        if (!change.next) return change.outcome;
        const n = change.next;
        next = { ...cur, iccid: n.iccid, msisdn: n.msisdn, group_name: n.group, bound_imei: n.imei, tags: n.tags, secret_hash: n.secretHash };
        (inserts.has(row.imsi) ? inserts : updates).set(row.imsi, next);
        outcome = change.outcome;
        if (cur.iccid && cur.iccid !== next.iccid && holders.get(cur.iccid) === row.imsi) holders.delete(cur.iccid);
      }
      current.set(row.imsi, next);
      if (next.iccid) holders.set(next.iccid, row.imsi);
      return outcome;
    });
    const column = <K extends keyof SimRow>(rows: Map<string, SimRow>, key: K) => [...rows.values()].map((r) => r[key]);
    await c.query('SAVEPOINT chunk');
    try {
      if (inserts.size) {
        await c.query(
          `INSERT INTO sims (imsi, iccid, msisdn, group_name, status, bound_imei, thing_name, tags, secret_hash, created_at)
           SELECT imsi, iccid, msisdn, group_name, 'active', bound_imei, thing_name, tags, secret_hash, $9
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) AS r(imsi, iccid, msisdn, group_name, bound_imei, thing_name, tags, secret_hash)`,
          [...(['imsi', 'iccid', 'msisdn', 'group_name', 'bound_imei', 'thing_name', 'tags', 'secret_hash'] as const).map((k) => column(inserts, k)), now],
        );
      }
      if (updates.size) {
        await c.query(
          `UPDATE sims s SET iccid = u.iccid, msisdn = u.msisdn, group_name = u.group_name, bound_imei = u.bound_imei, tags = u.tags, secret_hash = u.secret_hash
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) AS u(imsi, iccid, msisdn, group_name, bound_imei, tags, secret_hash)
           WHERE s.imsi = u.imsi`,
          (['imsi', 'iccid', 'msisdn', 'group_name', 'bound_imei', 'tags', 'secret_hash'] as const).map((k) => column(updates, k)),
        );
      }
      await c.query('RELEASE SAVEPOINT chunk');
      return outcomes;
    } catch {
      await c.query('ROLLBACK TO SAVEPOINT chunk');
      return undefined;
    }
  }

  private async upsertOneByOne(c: pg.PoolClient, rows: SimImportRow[], force: boolean, now: number): Promise<ImportOutcome[]> {
    const outcomes: ImportOutcome[] = [];
    for (const row of rows) outcomes.push(await this.upsertOne(c, row, force, now));
    return outcomes;
  }

  private async upsertOne(c: pg.PoolClient, row: SimImportRow, force: boolean, now: number): Promise<ImportOutcome> {
    if (row.iccid) {
      const holder = (await c.query<{ imsi: string }>('SELECT imsi FROM sims WHERE iccid = $1', [row.iccid])).rows[0]?.imsi;
      if (holder !== undefined && holder !== row.imsi) return { result: 'failed', field: 'iccid', message: `ICCID already belongs to SIM ${holder}` };
    }
    const existing = (await c.query<SimRow>(`SELECT ${COLUMNS} FROM sims WHERE imsi = $1`, [row.imsi])).rows[0];
    if (!existing) {
      const failed = await guarded(c, () =>
        c.query(
          `INSERT INTO sims (imsi, iccid, msisdn, group_name, status, bound_imei, thing_name, tags, secret_hash, created_at) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8, $9)`,
          [row.imsi, row.iccid ?? null, row.msisdn ?? null, row.group, row.imei ?? null, row.thingName, JSON.stringify(row.tags ?? {}), row.secretHash ?? null, now],
        ),
      );
      if (failed) return { result: 'failed', field: 'imsi', message: failed };
      return createdOutcome(row);
    }
    const change = importChange(fromRow(existing), existing.tags, row, force);
    if (!change.next) return change.outcome;
    const { next } = change;
    const failed = await guarded(c, () =>
      c.query('UPDATE sims SET iccid = $1, msisdn = $2, group_name = $3, bound_imei = $4, tags = $5, secret_hash = $6 WHERE imsi = $7', [
        next.iccid, next.msisdn, next.group, next.imei, next.tags, next.secretHash, row.imsi,
      ]),
    );
    if (failed) return { result: 'failed', field: 'iccid', message: failed };
    return change.outcome;
  }
}

/**
 * Runs one statement of a larger transaction in a savepoint: a constraint violation fails that row only
 * (PostgreSQL would otherwise abort the whole transaction). Resolves with the row's failure message, if any.
 */
async function guarded(c: pg.PoolClient, statement: () => Promise<unknown>): Promise<string | undefined> {
  await c.query('SAVEPOINT row');
  try {
    await statement();
    await c.query('RELEASE SAVEPOINT row');
    return undefined;
  } catch (err) {
    await c.query('ROLLBACK TO SAVEPOINT row');
    return constraintMessage(err);
  }
}

class DryRun extends Error {
  constructor(readonly outcomes: ImportOutcome[]) {
    super('dry run');
  }
}

function constraintMessage(err: unknown): string {
  const e = err as { constraint?: string; message?: string };
  if (e.constraint === 'sims_thing_name_key') return 'thing name already used by another SIM (check the vending.thingName template)';
  if (e.constraint === 'sims_iccid_key') return 'ICCID already belongs to another SIM';
  return e.message ?? String(err);
}
