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
}

interface SimRow {
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
}

function fromRow(r: SimRow): Sim {
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
  };
}

/** The SIM registry. */
export class SimStore {
  private readonly getStmt;
  private readonly insertStmt;
  private readonly seenStmt;

  constructor(private readonly db: Db) {
    this.getStmt = db.prepare('SELECT * FROM sims WHERE imsi = ?');
    this.insertStmt = db.prepare(
      `INSERT INTO sims (imsi, iccid, msisdn, group_name, status, bound_imei, thing_name, tags, created_at)
       VALUES (@imsi, @iccid, @msisdn, @group, 'active', @boundImei, @thingName, @tags, @now)
       ON CONFLICT (imsi) DO NOTHING`,
    );
    this.seenStmt = db.prepare('UPDATE sims SET last_seen_at = ? WHERE imsi = ?');
  }

  get(imsi: string): Sim | undefined {
    const row = this.getStmt.get(imsi) as SimRow | undefined;
    return row && fromRow(row);
  }

  /** Creates the SIM unless it exists; returns the stored record and whether it was new. */
  register(sim: { imsi: string; group: string; thingName: string; iccid?: string; msisdn?: string; boundImei?: string; tags?: Record<string, string> }): { sim: Sim; created: boolean } {
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
   * Binds the SIM to an IMEI. With onlyIfUnbound the bind happens only when no IMEI is bound yet, in one
   * statement, so two first contacts at once cannot both bind.
   */
  bindImei(imsi: string, imei: string | null, onlyIfUnbound = false): boolean {
    const sql = onlyIfUnbound ? 'UPDATE sims SET bound_imei = ? WHERE imsi = ? AND bound_imei IS NULL' : 'UPDATE sims SET bound_imei = ? WHERE imsi = ?';
    return this.db.prepare(sql).run(imei, imsi).changes === 1;
  }

  setLockMode(imsi: string, mode: string | null): boolean {
    return this.db.prepare('UPDATE sims SET lock_mode = ? WHERE imsi = ?').run(mode, imsi).changes === 1;
  }

  setSecretHash(imsi: string, hash: string | null): boolean {
    return this.db.prepare('UPDATE sims SET secret_hash = ? WHERE imsi = ?').run(hash, imsi).changes === 1;
  }

  setStatus(imsi: string, status: SimStatus): boolean {
    return this.db.prepare('UPDATE sims SET status = ? WHERE imsi = ?').run(status, imsi).changes === 1;
  }
}
