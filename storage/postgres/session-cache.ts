import { fromRow, type ChangeResult, type EndedSession, type NetworkSession, type NetworkSessionStore, type SessionLookup, type SessionRow } from '../network-sessions.ts';
import { batched, CHANNELS, type ChangeFeed } from './changes.ts';
import type { Pool } from './connect.ts';

/**
 * Network sessions (IP → identity) in this node's memory, for identifying devices by their address with
 * no query per connection: read whole at start, each IP read again when any node's RADIUS accounting
 * changes it (migration 010's trigger), all of them after the change feed reconnects. Accounting applied
 * through `store` on this node refreshes its IPs before it resolves, so a device connecting right after
 * its Start is found here. A session that another node's accounting ended (a Stop received there) is
 * reported to `onEndedElsewhere`, so the device connected to this node can be let go.
 */
export class PgSessionCache implements SessionLookup {
  private sessions = new Map<string, NetworkSession>();
  private readonly endedElsewhere: Array<(session: NetworkSession) => void> = [];
  /** The store for the RADIUS listener: applying changes refreshes what they touched. */
  readonly store: NetworkSessionStore;

  constructor(
    private readonly pool: Pool,
    inner: NetworkSessionStore,
    feed: ChangeFeed,
    onError: (err: unknown) => void,
  ) {
    feed.on(CHANNELS.sessions, batched((ips) => this.refresh(ips, true), onError));
    feed.onResync(() => this.load());
    this.store = {
      ...bindAll(inner),
      applyAll: async (changes) => {
        const results = await inner.applyAll(changes);
        await this.refresh(touched(results), false);
        return results;
      },
      expire: async (olderThanMs) => {
        const gone = await inner.expire(olderThanMs);
        await this.refresh(gone.map((e) => e.session.ip), false);
        return gone;
      },
    };
  }

  async load(): Promise<void> {
    const { rows } = await this.pool.query<SessionRow>('SELECT * FROM network_sessions');
    this.sessions = new Map(rows.map((r) => [r.ip, fromRow(r)]));
  }

  /** Reads these IPs again; `notice`: the change may be another node's, so an ended session is reported. */
  async refresh(ips: string[], notice: boolean): Promise<void> {
    if (ips.length === 0) return;
    const { rows } = await this.pool.query<SessionRow>('SELECT * FROM network_sessions WHERE ip = ANY($1::text[])', [ips]);
    const now = new Map(rows.map((r) => [r.ip, fromRow(r)]));
    for (const ip of new Set(ips)) {
      const before = this.sessions.get(ip);
      const after = now.get(ip);
      if (after) this.sessions.set(ip, after);
      else this.sessions.delete(ip);
      if (notice && before && (!after || after.acctSessionId !== before.acctSessionId || after.imsi !== before.imsi)) {
        for (const fn of this.endedElsewhere) fn(before);
      }
    }
  }

  /** A session this node held in memory ended through a change it did not apply itself. */
  onEndedElsewhere(fn: (session: NetworkSession) => void): void {
    this.endedElsewhere.push(fn);
  }

  byIp(ip: string): NetworkSession | undefined {
    return this.sessions.get(ip);
  }

  count(): number {
    return this.sessions.size;
  }
}

/** The IPs a batch of applied changes started or ended sessions on. */
function touched(results: Array<ChangeResult | Error>): string[] {
  const ips: string[] = [];
  for (const r of results) {
    if (r instanceof Error) continue;
    if (r.started) ips.push(r.started.session.ip);
    for (const e of r.ended as EndedSession[]) ips.push(e.session.ip);
  }
  return ips;
}

function bindAll(s: NetworkSessionStore): NetworkSessionStore {
  return {
    applyAll: (c) => s.applyAll(c),
    expire: (ms) => s.expire(ms),
    forgetOldStops: () => s.forgetOldStops(),
    byImsi: (imsi) => s.byImsi(imsi),
    count: () => s.count(),
    list: () => s.list(),
  };
}
