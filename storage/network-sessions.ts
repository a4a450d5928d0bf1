import type { Db } from './db.ts';
import { eventsTapped, queueSessionEvents } from './events.ts';

/** An IP session as the mobile network reported it (RADIUS accounting, RFC 2866). */
export interface NetworkSession {
  ip: string;
  imsi: string;
  /** 15-digit IMEI, normalised by the caller. */
  imei: string | null;
  msisdn: string | null;
  ratType: number | null;
  nasIp: string;
  nasIdentifier: string | null;
  acctSessionId: string;
  chargingId: number | null;
  startedAt: number;
  updatedAt: number;
  /** Accounting records (Start, Interim-Update) applied to this session. */
  updates: number;
}

/** What a Start or Interim-Update says about a session. */
export interface SessionReport {
  ip: string;
  imsi: string;
  imei?: string | null;
  msisdn?: string | null;
  ratType?: number | null;
  nasIp: string;
  nasIdentifier?: string | null;
  acctSessionId: string;
  chargingId?: number | null;
  /** When the network says the event happened (Event-Timestamp, RFC 2869 §5.3), ms since epoch. */
  eventTime?: number | null;
}

/** Why an authentic record was not applied: a replay of a stopped session, or news older than what we hold. */
export type IgnoredReason = 'stopped_session' | 'stale_event';

export type SessionEndCause = 'stop' | 'evicted' | 'nas_on' | 'nas_off' | 'expired';

export interface EndedSession {
  session: NetworkSession;
  cause: SessionEndCause;
}

export interface RecordResult {
  session: NetworkSession;
  /** True when a row was created (a new session), false when an existing one was refreshed. */
  created: boolean;
  /** The session this one displaced from the IP, if any. */
  ended: EndedSession[];
  /** Set when the record changed nothing, and why. */
  ignored?: IgnoredReason;
}

/** One change the network reports (RADIUS accounting, RFC 2866): what an Accounting-Request asks for. */
export type SessionChange =
  | { kind: 'start' | 'interim'; report: SessionReport }
  | { kind: 'stop'; ip: string; acctSessionId: string; nasIp: string }
  | { kind: 'nas_on' | 'nas_off'; nasIp: string; nasIdentifier: string | null };

/** What a change did: the session it began, if any, and those it ended. */
export interface ChangeResult {
  started?: { session: NetworkSession; cause: 'start' | 'interim' };
  ended: EndedSession[];
  /** Authentic but not applied (answered all the same, so the NAS stops retransmitting). */
  ignored?: IgnoredReason;
}

/**
 * The IP → identity table as the RADIUS listener and the admin surface see it: promise-shaped, so a
 * PostgreSQL store can stand beside the SQLite one. Identifying a device reads SessionLookup instead.
 */
export interface NetworkSessionStore {
  /**
   * Applies the changes in one transaction (one commit for a burst from the network); resolves with each
   * one's result or error, in order, and rejects when the transaction as a whole failed (nothing holds).
   */
  applyAll(changes: SessionChange[]): Promise<Array<ChangeResult | Error>>;
  /** Removes sessions without a Start or Interim-Update for olderThanMs (their Stop was lost). */
  expire(olderThanMs: number): Promise<EndedSession[]>;
  /** Forgets stopped session ids older than the replay window. */
  forgetOldStops(): Promise<number>;
  /** A SIM's sessions (one per APN / PDN connection), the most recently updated first. */
  byImsi(imsi: string): Promise<NetworkSession[]>;
  count(): Promise<number>;
  list(): Promise<NetworkSession[]>;
}

/**
 * Who holds an IP now, synchronously: read when a device connects or sends, so a store must be able to
 * answer it from memory (a cluster node keeps the table it is told about).
 */
export interface SessionLookup {
  byIp(ip: string): NetworkSession | undefined;
  /** Sessions live now. */
  count(): number;
}

/** A network_sessions row, as both dialects return it. */
export interface SessionRow {
  ip: string;
  imsi: string;
  imei: string | null;
  msisdn: string | null;
  rat_type: number | null;
  nas_ip: string;
  nas_identifier: string | null;
  acct_session_id: string;
  charging_id: number | null;
  started_at: number;
  updated_at: number;
  updates: number;
  opened_event_at: number | null;
}

export function fromRow(r: SessionRow): NetworkSession {
  return {
    ip: r.ip,
    imsi: r.imsi,
    imei: r.imei,
    msisdn: r.msisdn,
    ratType: r.rat_type,
    nasIp: r.nas_ip,
    nasIdentifier: r.nas_identifier,
    acctSessionId: r.acct_session_id,
    chargingId: r.charging_id,
    startedAt: r.started_at,
    updatedAt: r.updated_at,
    updates: r.updates,
  };
}

/** What an accounting report says of its session, absent attributes as null (both dialects store it so). */
export function reportFields(r: SessionReport) {
  return {
    ip: r.ip,
    imsi: r.imsi,
    imei: r.imei ?? null,
    msisdn: r.msisdn ?? null,
    ratType: r.ratType ?? null,
    nasIp: r.nasIp,
    nasIdentifier: r.nasIdentifier ?? null,
    acctSessionId: r.acctSessionId,
    chargingId: r.chargingId ?? null,
  };
}

/** The sessions a change ended, with why. */
export const ended = (rows: SessionRow[], cause: SessionEndCause): EndedSession[] => rows.map((r) => ({ session: fromRow(r), cause }));

/**
 * The IP → identity table fed by RADIUS accounting. Every change runs in its own transaction (a savepoint
 * when the caller already holds one, as the listener's group commit does) and returns the sessions it
 * ended, so the caller can disconnect whatever was using them.
 */
export class NetworkSessions implements SessionLookup {
  private readonly getByIp;
  private readonly getByImsi;
  private readonly insertStmt;
  private readonly refreshStmt;
  private readonly deleteIp;
  private readonly deleteMatching;
  private readonly deleteNas;
  private readonly deleteStale;
  private readonly countStmt;
  private readonly listStmt;
  private readonly rememberStop;
  private readonly wasStopped;
  private readonly forgetStops;
  private readonly recordTx;

  /**
   * replayWindowMs: how long a stopped Acct-Session-Id is remembered, and how old an Event-Timestamp may be,
   * before a Start or Interim-Update that carries it is ignored as a replay.
   */
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
    private readonly replayWindowMs = 24 * 3600_000,
  ) {
    this.getByIp = db.prepare<[string], SessionRow>('SELECT * FROM network_sessions WHERE ip = ?');
    this.getByImsi = db.prepare<[string], SessionRow>('SELECT * FROM network_sessions WHERE imsi = ? ORDER BY updated_at DESC, ip');
    // Positional parameters throughout: better-sqlite3 binds an object of named ones several times slower.
    this.insertStmt = db.prepare<[string, string, string | null, string | null, number | null, string, string | null, string, number | null, number, number, number | null]>(
      `INSERT INTO network_sessions (ip, imsi, imei, msisdn, rat_type, nas_ip, nas_identifier, acct_session_id, charging_id, started_at, updated_at, updates, opened_event_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)`,
    );
    // Same session (IP, Acct-Session-Id and SIM) only. An Interim-Update may omit what the Start carried:
    // keep what we knew rather than forget it. (No RETURNING: SQLite's is markedly slower on this hot path.)
    // nas_ip stays as the Start set it: assigning it, even unchanged, rewrites its index entry each time.
    this.refreshStmt = db.prepare<[string | null, string | null, number | null, string | null, number | null, number, string, string, string]>(
      `UPDATE network_sessions SET imei = coalesce(?, imei), msisdn = coalesce(?, msisdn), rat_type = coalesce(?, rat_type),
         nas_identifier = coalesce(?, nas_identifier), charging_id = coalesce(?, charging_id),
         updated_at = ?, updates = updates + 1
       WHERE ip = ? AND acct_session_id = ? AND imsi = ?`,
    );
    this.deleteIp = db.prepare<[string], SessionRow>('DELETE FROM network_sessions WHERE ip = ? RETURNING *');
    this.deleteMatching = db.prepare<[string, string], SessionRow>(
      'DELETE FROM network_sessions WHERE ip = ? AND acct_session_id = ? RETURNING *',
    );
    this.deleteNas = db.prepare<[string, string | null, string | null], SessionRow>(
      'DELETE FROM network_sessions WHERE nas_ip = ? AND (? IS NULL OR nas_identifier = ?) RETURNING *',
    );
    this.deleteStale = db.prepare<[number], SessionRow>('DELETE FROM network_sessions WHERE updated_at < ? RETURNING *');
    this.countStmt = db.prepare('SELECT count(*) FROM network_sessions').pluck();
    this.listStmt = db.prepare<[], SessionRow>('SELECT * FROM network_sessions ORDER BY ip');
    this.rememberStop = db.prepare<[string, string, number]>('INSERT OR REPLACE INTO stopped_sessions (nas_ip, acct_session_id, stopped_at) VALUES (?, ?, ?)');
    this.wasStopped = db.prepare<[string, string, number]>('SELECT 1 FROM stopped_sessions WHERE nas_ip = ? AND acct_session_id = ? AND stopped_at >= ?').pluck();
    this.forgetStops = db.prepare<[number]>('DELETE FROM stopped_sessions WHERE stopped_at < ?');
    this.recordTx = db.transaction((r: SessionReport): RecordResult => {
      const now = this.now();
      const f = reportFields(r);
      const refreshed = this.refreshStmt.run(f.imei, f.msisdn, f.ratType, f.nasIdentifier, f.chargingId, now, f.ip, f.acctSessionId, f.imsi);
      if (refreshed.changes === 1) return { session: fromRow(this.getByIp.get(f.ip)!), created: false, ended: [] };
      // Only a record that would open a session can re-open a stopped one or evict a newer holder.
      const ignored = this.replayed(r, now);
      if (ignored) return { session: { ...f, startedAt: now, updatedAt: now, updates: 0 }, created: false, ended: [], ignored };
      // Anything else on this IP is over: the network has handed the address on, and whoever used it
      // under the old identity must not keep it.
      const evicted = ended(this.deleteIp.all(f.ip), 'evicted');
      this.insertStmt.run(f.ip, f.imsi, f.imei, f.msisdn, f.ratType, f.nasIp, f.nasIdentifier, f.acctSessionId, f.chargingId, now, now, r.eventTime ?? null);
      return { session: { ...f, startedAt: now, updatedAt: now, updates: 1 }, created: true, ended: evicted };
    });
  }

  /**
   * A stopped session does not come back, and news older than the replay window or than the session now
   * holding the IP does not displace it. Runs when a record would open a session (one or two indexed lookups).
   */
  private replayed(r: SessionReport, now: number): IgnoredReason | undefined {
    if (this.wasStopped.get(r.nasIp, r.acctSessionId, now - this.replayWindowMs)) return 'stopped_session';
    if (r.eventTime == null) return undefined;
    if (r.eventTime < now - this.replayWindowMs) return 'stale_event';
    const holder = this.getByIp.get(r.ip);
    // Both stamps come from the network's clock, so the gateway's own clock skew does not enter.
    if (holder?.opened_event_at != null && holder.acct_session_id !== r.acctSessionId && holder.opened_event_at > r.eventTime) return 'stale_event';
    return undefined;
  }

  /** Accounting Start: creates the session, evicting another session that held the IP. */
  start(report: SessionReport): RecordResult {
    return this.recordTx.immediate(report);
  }

  /**
   * Interim-Update: refreshes the session, or creates it when its Start was missed (evicting as Start
   * does: the latest word from the network about an IP wins).
   */
  interim(report: SessionReport): RecordResult {
    return this.recordTx.immediate(report);
  }

  /**
   * Accounting Stop: removes the session only if the IP is still held by that Acct-Session-Id, and remembers
   * the id (whether or not it was held) so that a replay of its Start cannot re-open it.
   */
  stop(ip: string, acctSessionId: string, nasIp: string): EndedSession[] {
    return this.db
      .transaction(() => {
        this.rememberStop.run(nasIp, acctSessionId, this.now());
        return ended(this.deleteMatching.all(ip, acctSessionId), 'stop');
      })
      .immediate();
  }

  /** Forgets stopped sessions older than the replay window; returns how many. */
  forgetOldStops(): number {
    return this.forgetStops.run(this.now() - this.replayWindowMs).changes;
  }

  /**
   * Accounting-On / Accounting-Off (RFC 2866 §5.1): the NAS (re)started or stops, so none of its sessions
   * survive. A NAS-Identifier, when given, narrows the match to that NAS among several behind one address.
   */
  clearNas(nasIp: string, nasIdentifier: string | null, cause: 'nas_on' | 'nas_off'): EndedSession[] {
    return this.db
      .transaction(() => ended(this.deleteNas.all(nasIp, nasIdentifier, nasIdentifier), cause))
      .immediate();
  }

  /** Removes sessions without a Start or Interim-Update for olderThanMs (their Stop was lost). */
  expire(olderThanMs: number): EndedSession[] {
    return this.db
      .transaction(() => {
        const gone = ended(this.deleteStale.all(this.now() - olderThanMs), 'expired');
        queueSessionEvents(this.db, undefined, gone);
        return gone;
      })
      .immediate();
  }

  /**
   * One change, in its own transaction (a savepoint inside applyAll's); the network-session events it
   * makes (storage/events.ts) are written in the same one.
   */
  apply(change: SessionChange): ChangeResult {
    if (!eventsTapped(this.db)) return this.applyChange(change);
    return this.db
      .transaction(() => {
        const result = this.applyChange(change);
        queueSessionEvents(this.db, result.started?.session, result.ended);
        return result;
      })
      .immediate();
  }

  private applyChange(change: SessionChange): ChangeResult {
    switch (change.kind) {
      case 'start':
      case 'interim': {
        const r = change.kind === 'start' ? this.start(change.report) : this.interim(change.report);
        if (r.ignored) return { ended: [], ignored: r.ignored };
        return { ended: r.ended, ...(r.created ? { started: { session: r.session, cause: change.kind } } : {}) };
      }
      case 'stop':
        return { ended: this.stop(change.ip, change.acctSessionId, change.nasIp) };
      case 'nas_on':
      case 'nas_off':
        return { ended: this.clearNas(change.nasIp, change.nasIdentifier, change.kind) };
    }
  }

  /**
   * Applies many changes in one transaction (one commit for a burst from the network), each in its own
   * savepoint so that one failing change does not take the others down. An error that rolls back the
   * whole transaction (such as SQLITE_FULL) is thrown: then nothing of the batch holds.
   */
  applyAll(changes: SessionChange[]): Array<ChangeResult | Error> {
    return this.db
      .transaction(() =>
        changes.map((change) => {
          try {
            return this.apply(change);
          } catch (err) {
            if (!this.db.inTransaction) throw err;
            return err as Error;
          }
        }),
      )
      .immediate();
  }

  byIp(ip: string): NetworkSession | undefined {
    const row = this.getByIp.get(ip);
    return row && fromRow(row);
  }

  /** A SIM may hold several sessions (one per APN / PDN connection); the most recently updated first. */
  byImsi(imsi: string): NetworkSession[] {
    return this.getByImsi.all(imsi).map(fromRow);
  }

  count(): number {
    return this.countStmt.get() as number;
  }

  list(): NetworkSession[] {
    return this.listStmt.all().map(fromRow);
  }
}
