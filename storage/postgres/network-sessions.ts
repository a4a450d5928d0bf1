import type pg from 'pg';
import type {
  ChangeResult,
  EndedSession,
  IgnoredReason,
  NetworkSession,
  NetworkSessionStore,
  SessionChange,
  SessionEndCause,
  SessionReport,
  SessionRow,
} from '../network-sessions.ts';
import { ended, fromRow, reportFields } from '../network-sessions.ts';
import { transaction, type Pool, type Queryable } from './connect.ts';
import { pgEventsTapped, queuePgEvents, sessionFacts } from './events.ts';
import { lockInTransaction } from './locks.ts';
import { changed } from './params.ts';


/**
 * The IP → identity table fed by RADIUS accounting, on PostgreSQL, with the rules of
 * storage/network-sessions.ts: a Start evicts the IP's other session, a Stop removes only its own
 * session and is remembered against replays, Accounting-On/Off clears a NAS.
 */
export class PgNetworkSessions implements NetworkSessionStore {
  constructor(
    private readonly pool: Pool,
    private readonly now: () => number = Date.now,
    private readonly replayWindowMs = 24 * 3600_000,
  ) {}

  /** One transaction for the batch, each change in its own savepoint, as the SQLite store does. */
  async applyAll(changes: SessionChange[]): Promise<Array<ChangeResult | Error>> {
    return transaction(this.pool, async (c) => {
      const results: Array<ChangeResult | Error> = [];
      for (const change of changes) {
        await c.query('SAVEPOINT change');
        try {
          const result = await this.apply(c, change);
          // The network-session events it makes are written in the same savepoint (storage/postgres/events.ts).
          await queuePgEvents(this.pool, c, sessionFacts(result.started?.session, result.ended));
          results.push(result);
          await c.query('RELEASE SAVEPOINT change');
        } catch (err) {
          // A lost connection fails the batch as a whole; anything else fails this change only.
          await c.query('ROLLBACK TO SAVEPOINT change');
          results.push(err as Error);
        }
      }
      return results;
    });
  }

  private async apply(c: pg.PoolClient, change: SessionChange): Promise<ChangeResult> {
    switch (change.kind) {
      case 'start':
      case 'interim': {
        // The PGW sends accounting to more than one server: the same Start may reach two nodes at once. Changes
        // of one IP wait for each other; without it both would find no session, and the second insert would
        // fail on the IP's key instead of refreshing what the first opened.
        await lockInTransaction(c, 'radiusIp', change.report.ip);
        const r = await this.record(c, change.report);
        if (r.ignored) return { ended: [], ignored: r.ignored };
        return { ended: r.ended, ...(r.created ? { started: { session: r.session, cause: change.kind } } : {}) };
      }
      case 'stop': {
        await lockInTransaction(c, 'radiusIp', change.ip);
        await c.query(
          `INSERT INTO stopped_sessions (nas_ip, acct_session_id, stopped_at) VALUES ($1, $2, $3)
           ON CONFLICT (nas_ip, acct_session_id) DO UPDATE SET stopped_at = excluded.stopped_at`,
          [change.nasIp, change.acctSessionId, this.now()],
        );
        const { rows } = await c.query<SessionRow>('DELETE FROM network_sessions WHERE ip = $1 AND acct_session_id = $2 RETURNING *', [change.ip, change.acctSessionId]);
        return { ended: ended(rows, 'stop') };
      }
      case 'nas_on':
      case 'nas_off': {
        const { rows } = await c.query<SessionRow>('DELETE FROM network_sessions WHERE nas_ip = $1 AND ($2::text IS NULL OR nas_identifier = $2) RETURNING *', [
          change.nasIp,
          change.nasIdentifier,
        ]);
        return { ended: ended(rows, change.kind) };
      }
    }
  }

  /** Start or Interim-Update: refreshes the same session, or opens it (evicting the IP's other session). */
  private async record(c: pg.PoolClient, r: SessionReport): Promise<{ session: NetworkSession; created: boolean; ended: EndedSession[]; ignored?: IgnoredReason }> {
    const now = this.now();
    const f = reportFields(r);
    const refreshed = await c.query<SessionRow>(
      `UPDATE network_sessions SET imei = coalesce($1, imei), msisdn = coalesce($2, msisdn), rat_type = coalesce($3, rat_type),
         nas_identifier = coalesce($4, nas_identifier), charging_id = coalesce($5, charging_id), updated_at = $6, updates = updates + 1
       WHERE ip = $7 AND acct_session_id = $8 AND imsi = $9 RETURNING *`,
      [f.imei, f.msisdn, f.ratType, f.nasIdentifier, f.chargingId, now, f.ip, f.acctSessionId, f.imsi],
    );
    if (refreshed.rows[0]) return { session: fromRow(refreshed.rows[0]), created: false, ended: [] };
    const ignored = await this.replayed(c, r, now);
    if (ignored) return { session: { ...f, startedAt: now, updatedAt: now, updates: 0 }, created: false, ended: [], ignored };
    const evicted = ended((await c.query<SessionRow>('DELETE FROM network_sessions WHERE ip = $1 RETURNING *', [f.ip])).rows, 'evicted');
    await c.query(
      `INSERT INTO network_sessions (ip, imsi, imei, msisdn, rat_type, nas_ip, nas_identifier, acct_session_id, charging_id, started_at, updated_at, updates, opened_event_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1, $11)`,
      [f.ip, f.imsi, f.imei, f.msisdn, f.ratType, f.nasIp, f.nasIdentifier, f.acctSessionId, f.chargingId, now, r.eventTime ?? null],
    );
    return { session: { ...f, startedAt: now, updatedAt: now, updates: 1 }, created: true, ended: evicted };
  }

  private async replayed(c: pg.PoolClient, r: SessionReport, now: number): Promise<IgnoredReason | undefined> {
    const stopped = await c.query('SELECT 1 FROM stopped_sessions WHERE nas_ip = $1 AND acct_session_id = $2 AND stopped_at >= $3', [
      r.nasIp,
      r.acctSessionId,
      now - this.replayWindowMs,
    ]);
    if (stopped.rows.length) return 'stopped_session';
    if (r.eventTime == null) return undefined;
    if (r.eventTime < now - this.replayWindowMs) return 'stale_event';
    const holder = (await c.query<SessionRow>('SELECT * FROM network_sessions WHERE ip = $1', [r.ip])).rows[0];
    if (holder?.opened_event_at != null && holder.acct_session_id !== r.acctSessionId && holder.opened_event_at > r.eventTime) return 'stale_event';
    return undefined;
  }

  async expire(olderThanMs: number): Promise<EndedSession[]> {
    const expire = async (db: Queryable) => ended((await db.query<SessionRow>('DELETE FROM network_sessions WHERE updated_at < $1 RETURNING *', [this.now() - olderThanMs])).rows, 'expired');
    if (!pgEventsTapped(this.pool)) return expire(this.pool);
    return transaction(this.pool, async (c) => {
      const gone = await expire(c);
      await queuePgEvents(this.pool, c, sessionFacts(undefined, gone));
      return gone;
    });
  }

  async forgetOldStops(): Promise<number> {
    return changed(await this.pool.query('DELETE FROM stopped_sessions WHERE stopped_at < $1', [this.now() - this.replayWindowMs]));
  }

  /** Who holds an IP now. Asynchronous: identifying devices on this store needs the cluster's session cache first. */
  async byIp(ip: string, db: Queryable = this.pool): Promise<NetworkSession | undefined> {
    const row = (await db.query<SessionRow>('SELECT * FROM network_sessions WHERE ip = $1', [ip])).rows[0];
    return row && fromRow(row);
  }

  async byImsi(imsi: string): Promise<NetworkSession[]> {
    return (await this.pool.query<SessionRow>('SELECT * FROM network_sessions WHERE imsi = $1 ORDER BY updated_at DESC, ip COLLATE "C"', [imsi])).rows.map(fromRow);
  }

  async count(): Promise<number> {
    return (await this.pool.query<{ n: number }>('SELECT count(*) AS n FROM network_sessions')).rows[0]!.n;
  }

  async list(): Promise<NetworkSession[]> {
    return (await this.pool.query<SessionRow>('SELECT * FROM network_sessions ORDER BY ip COLLATE "C"')).rows.map(fromRow);
  }
}
