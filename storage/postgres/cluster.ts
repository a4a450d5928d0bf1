import { batched, CHANNELS, type ChangeFeed } from './changes.ts';
import type { Pool, Queryable } from './connect.ts';

/** Now, in ms, by the database's clock: lease times never depend on a node's clock. */
const NOW_MS = '(extract(epoch from clock_timestamp()) * 1000)::bigint';

/**
 * Leases whose key starts with "@" are not a SIM's but a stream of the gateway's own (its lifecycle
 * events, GATEWAY_OUTBOX_KEY): no IMSI starts so. Only a node serving the stream takes one (serveStream),
 * and the SIMs' listeners never hear of them.
 */
export const isStreamKey = (key: string): boolean => key.startsWith('@');
/** SQL: the lease key (or outbox key) in column `col` is a SIM's. */
const simKey = (col: string) => `left(${col}, 1) <> '@'`;

/** What a node serving a stream hears of its lease. */
export interface StreamListener {
  gained(): void;
  lost(): void;
}

export interface ClusterOptions {
  nodeId: string;
  /** How often the heartbeat is renewed, and dead nodes' SIMs looked for. */
  heartbeatMs: number;
  /** A node whose heartbeat is older than this is dead. */
  leaseMs: number;
  /** SIMs of dead nodes taken over per heartbeat. */
  takeoverBatch: number;
  /** How old a node's count of a SIM another node holds may be when it checks the outbox quotas (default 1000). */
  quotaRefreshMs?: number;
  /** Shown by GET /v1/cluster: ports, pid. */
  info?: Record<string, unknown>;
}

/** What a SIM this node just gained already had waiting, committed by others. */
export interface Gained {
  imsi: string;
  epoch: number;
  rows: number;
  bytes: number;
  /** Newest row id of the SIM before this node's own commit (0: none). */
  newest: number;
}

export interface NodeStatus {
  nodeId: string;
  startedAt: number;
  heartbeatAgeMs: number;
  alive: boolean;
  simsOwned: number;
  outboxRows: number;
  info: Record<string, unknown>;
}

/**
 * This node among the nodes sharing one PostgreSQL database: its heartbeat, and the SIMs it holds.
 *
 * A SIM's lease (sim_leases) names the node that drains its outbox and holds its thing's upstream session,
 * with an epoch raised on every change of owner. A lease lives while its owner's heartbeat does, so one
 * heartbeat row renews every lease a node holds. A node takes a SIM when it commits the SIM's first
 * message and no live node holds it, and takes dead nodes' SIMs on its heartbeat. A node that could not
 * renew its heartbeat for most of a lease lets go of all its SIMs itself (before any other node may take
 * them): it cannot know whether the others still see it alive. The outbox's deletes of delivered rows
 * name the epoch they were delivered under (storage/postgres/outbox.ts), so a node that lost a SIM deletes
 * nothing of it.
 */
export class ClusterNode {
  /** SIMs this node holds, with the epoch each was granted. */
  private readonly owned = new Map<string, number>();
  /** When (this process's monotonic clock) the last heartbeat that succeeded was sent. */
  private lastBeat = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> | undefined;
  /** Let go of everything while unsure: what no other node took meanwhile is taken back once sure again. */
  private reclaimOwn = false;
  /** A heartbeat failed since the last check of what this node holds. */
  private missedBeat = false;
  private readonly gainedListeners: Array<(gained: Gained[]) => void> = [];
  private readonly lostListeners: Array<(imsis: string[]) => void> = [];
  private readonly heldListeners: Array<(imsis: string[]) => void> = [];
  /** Streams this node serves (events), by lease key. */
  private readonly streams = new Map<string, StreamListener>();
  /** Nodes waiting to hold a SIM (acquire), by IMSI. */
  private readonly waiting = new Map<string, Array<(held: boolean) => void>>();
  /**
   * Before this node hands a SIM over to the node that asked for it: close its upstream session, so the
   * new holder's connection never meets this one.
   */
  beforeHandOver: (imsis: string[]) => Promise<void> = async () => undefined;
  /** What the node says of itself with each heartbeat (shown by GET /v1/cluster). */
  describe: () => Record<string, unknown> = () => this.opts.info ?? {};

  constructor(
    private readonly pool: Pool,
    readonly opts: ClusterOptions,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {}

  get nodeId(): string {
    return this.opts.nodeId;
  }

  /** SIMs gained other than by this node's own commit (take-over, start-up): their waiting rows must be read. */
  onGained(fn: (gained: Gained[]) => void): void {
    this.gainedListeners.push(fn);
  }

  /** SIMs this node came to hold, by any way (its own commit too): what they left on other nodes is taken up here. */
  onHeld(fn: (imsis: string[]) => void): void {
    this.heldListeners.push(fn);
  }

  /** The SIMs this node holds now. */
  heldSims(): string[] {
    return this.sure() ? [...this.owned.keys()].filter((key) => !isStreamKey(key)) : [];
  }

  /** SIMs this node no longer holds: stop delivering them, close their upstream sessions. */
  onLost(fn: (imsis: string[]) => void): void {
    this.lostListeners.push(fn);
  }

  /** The epoch this node holds the SIM at; undefined when it does not (or cannot be sure it does). */
  epochOf(imsi: string): number | undefined {
    return this.sure() ? this.owned.get(imsi) : undefined;
  }

  owns(imsi: string): boolean {
    return this.epochOf(imsi) !== undefined;
  }

  get simsOwned(): number {
    let streams = 0;
    for (const key of this.streams.keys()) if (this.owned.has(key)) streams++;
    return this.owned.size - streams;
  }

  /**
   * Serves a stream (a lease key starting with "@"): this node takes its lease when no live node holds it,
   * now and at every heartbeat, and hears when it gains or loses it. Holders change only when one dies,
   * leaves or cannot renew its heartbeat: a stream is never asked of its holder.
   */
  serveStream(key: string, listener: StreamListener): void {
    if (!isStreamKey(key)) throw new Error(`${key} is not a stream's lease key`);
    this.streams.set(key, listener);
    void this.takeStreams().catch(this.onError);
  }

  /** Takes the leases of served streams that no live node holds (or that name this node but are not noted here). */
  private async takeStreams(): Promise<void> {
    const free = [...this.streams.keys()].filter((key) => !this.owned.has(key));
    if (free.length === 0 || !this.sure()) return;
    await this.gain(await takeFreeLeases(this.pool, free, this.nodeId, this.opts.leaseMs));
  }

  /** The heartbeat was renewed recently enough that no other node may have taken this node's SIMs yet. */
  private sure(): boolean {
    return performance.now() - this.lastBeat < this.opts.leaseMs - this.opts.heartbeatMs;
  }

  /**
   * Joins: the node row, the SIMs this node id held before (a restart; their epochs raised, as an older
   * process with the same id must not delete anything now), and SIMs with waiting rows that no node holds.
   */
  async join(): Promise<Gained[]> {
    const sent = performance.now();
    await this.pool.query(
      `INSERT INTO cluster_nodes (node_id, started_at, heartbeat_at, info) VALUES ($1, ${NOW_MS}, ${NOW_MS}, $2)
       ON CONFLICT (node_id) DO UPDATE SET started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, info = excluded.info`,
      [this.nodeId, JSON.stringify(this.describe())],
    );
    this.lastBeat = sent;
    // Streams this node id held before its restart are let go (no node is named ''): whichever node
    // serves them next, this one included, takes them with a new epoch (serveStream). Its SIMs it keeps.
    const { rows: mine } = await this.pool.query<{ imsi: string; epoch: number }>(
      `WITH streams AS (
         UPDATE sim_leases SET owner = '', epoch = epoch + 1, acquired_at = ${NOW_MS}, wanted_by = NULL WHERE owner = $1 AND NOT ${simKey('imsi')})
       UPDATE sim_leases SET epoch = epoch + 1, acquired_at = ${NOW_MS}, wanted_by = NULL WHERE owner = $1 AND ${simKey('imsi')} RETURNING imsi, epoch`,
      [this.nodeId],
    );
    const { rows: orphans } = await this.pool.query<{ imsi: string; epoch: number }>(
      `INSERT INTO sim_leases (imsi, owner, epoch, acquired_at)
       SELECT DISTINCT o.imsi, $1, 1, ${NOW_MS} FROM outbox o WHERE ${simKey('o.imsi')} AND NOT EXISTS (SELECT 1 FROM sim_leases l WHERE l.imsi = o.imsi)
       ON CONFLICT (imsi) DO NOTHING RETURNING imsi, epoch`,
      [this.nodeId],
    );
    const gained = await this.gain([...mine, ...orphans]);
    this.timer = setInterval(() => void this.beat(), this.opts.heartbeatMs);
    this.timer.unref();
    return gained;
  }

  /** Renews the heartbeat and takes over dead nodes' SIMs; on failure, lets go of everything once unsure. */
  beat(): Promise<void> {
    this.beating ??= this.renew()
      .catch((err) => {
        this.missedBeat = true;
        this.onError(err);
        if (!this.sure()) this.loseAll();
      })
      .finally(() => (this.beating = undefined));
    return this.beating;
  }

  private async renew(): Promise<void> {
    const sent = performance.now();
    // Several missed heartbeats: others may have taken this node's SIMs meanwhile; let go first.
    if (!this.sure()) this.loseAll();
    const beat = await this.pool.query(`UPDATE cluster_nodes SET heartbeat_at = ${NOW_MS}, info = $2 WHERE node_id = $1`, [this.nodeId, JSON.stringify(this.describe())]);
    if (beat.rowCount === 0) {
      await this.pool.query(`INSERT INTO cluster_nodes (node_id, started_at, heartbeat_at, info) VALUES ($1, ${NOW_MS}, ${NOW_MS}, $2) ON CONFLICT (node_id) DO NOTHING`, [
        this.nodeId,
        JSON.stringify(this.describe()),
      ]);
    }
    this.lastBeat = sent;
    if (this.reclaimOwn) {
      this.reclaimOwn = false;
      const { rows } = await this.pool.query<{ imsi: string; epoch: number }>(
        `UPDATE sim_leases SET epoch = epoch + 1, acquired_at = ${NOW_MS}, wanted_by = NULL WHERE owner = $1 RETURNING imsi, epoch`,
        [this.nodeId],
      );
      await this.gain(rows);
    }
    // Leases this node believes it holds but another node took (it may have been seen dead for a moment):
    // checked after a heartbeat failed, not on every one (a hand-over is announced; a take-over needs this
    // node seen dead, which it lets go of by itself first).
    if (this.missedBeat && this.owned.size) {
      const asked = new Map(this.owned);
      const { rows } = await this.pool.query<{ imsi: string }>(
        `SELECT m.imsi FROM unnest($1::text[], $2::bigint[]) AS m(imsi, epoch)
         LEFT JOIN sim_leases l ON l.imsi = m.imsi AND l.owner = $3 AND l.epoch = m.epoch WHERE l.imsi IS NULL`,
        [[...asked.keys()], [...asked.values()], this.nodeId],
      );
      // A SIM this node's own commit claimed again meanwhile (a newer epoch, noted here since the question
      // was asked) is held: letting go of it would leave its lease naming this node with no one delivering.
      this.lose(rows.map((r) => r.imsi).filter((imsi) => this.owned.get(imsi) === asked.get(imsi)));
    }
    this.missedBeat = false;
    const { rows: taken } = await this.pool.query<{ imsi: string; epoch: number }>(
      // Through the (small) node table and the leases' owner index: no scan of every lease per heartbeat.
      `WITH dead AS (
         SELECT l.imsi FROM sim_leases l
         WHERE l.owner IN (SELECT n.node_id FROM cluster_nodes n WHERE n.node_id <> $1 AND n.heartbeat_at <= ${NOW_MS} - $2) AND ${simKey('l.imsi')}
         LIMIT $3 FOR UPDATE SKIP LOCKED)
       UPDATE sim_leases l SET owner = $1, epoch = l.epoch + 1, acquired_at = ${NOW_MS}, wanted_by = NULL FROM dead WHERE l.imsi = dead.imsi
       RETURNING l.imsi, l.epoch`,
      [this.nodeId, this.opts.leaseMs, this.opts.takeoverBatch],
    );
    if (taken.length) await this.gain(taken);
    else {
      // Nodes long dead that hold nothing any more are forgotten.
      await this.pool.query(
        `DELETE FROM cluster_nodes n WHERE n.heartbeat_at <= ${NOW_MS} - 10 * $1::bigint AND NOT EXISTS (SELECT 1 FROM sim_leases l WHERE l.owner = n.node_id)`,
        [this.opts.leaseMs],
      );
    }
    // A stream no live node holds (its holder died or left) is taken by a node serving it; after the SIMs
    // taken above are noted, so a failure here cannot leave them held in the database but not here.
    await this.takeStreams();
  }

  /**
   * Hears lease changes (hand-over requests and hand-overs) from every node. Call once, before join().
   */
  listen(feed: ChangeFeed): void {
    feed.on(CHANNELS.leases, batched((imsis) => this.leasesChanged(imsis), this.onError));
  }

  /**
   * Waits until this node holds the SIM: takes it when no live node does, else asks its holder to hand it
   * over (the holder closes its upstream session first). False when that did not happen within timeoutMs.
   */
  async acquire(imsi: string, timeoutMs: number): Promise<boolean> {
    if (this.owns(imsi)) return true;
    if (!this.sure()) return false;
    const held = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => this.settleWaiter(imsi, finish, false), timeoutMs);
      const finish = (ok: boolean) => {
        clearTimeout(timer);
        resolve(ok);
      };
      this.waiting.set(imsi, [...(this.waiting.get(imsi) ?? []), finish]);
    });
    const { rows } = await this.pool.query<{ imsi: string; epoch: number }>(
      `INSERT INTO sim_leases (imsi, owner, epoch, acquired_at) VALUES ($1, $2, 1, ${NOW_MS})
       ON CONFLICT (imsi) DO UPDATE SET owner = excluded.owner, epoch = sim_leases.epoch + 1, acquired_at = excluded.acquired_at, wanted_by = NULL
       WHERE sim_leases.owner = excluded.owner
          OR NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id = sim_leases.owner AND n.heartbeat_at > excluded.acquired_at - $3)
       RETURNING imsi, epoch`,
      [imsi, this.nodeId, this.opts.leaseMs],
    );
    if (rows.length) await this.gain(rows);
    else {
      await this.pool.query('UPDATE sim_leases SET wanted_by = $2 WHERE imsi = $1 AND owner <> $2', [imsi, this.nodeId]);
      await this.pool.query('SELECT pg_notify($1, $2)', [CHANNELS.leases, imsi]);
    }
    return held;
  }

  private settleWaiter(imsi: string, fn: (ok: boolean) => void, ok: boolean): void {
    const list = (this.waiting.get(imsi) ?? []).filter((f) => f !== fn);
    if (list.length) this.waiting.set(imsi, list);
    else this.waiting.delete(imsi);
    fn(ok);
  }

  private settleWaiters(imsi: string, ok: boolean): void {
    const list = this.waiting.get(imsi);
    if (!list) return;
    this.waiting.delete(imsi);
    for (const fn of list) fn(ok);
  }

  /** A lease changed somewhere: a SIM handed to this node, taken from it, or asked of it. */
  private async leasesChanged(imsis: string[]): Promise<void> {
    const { rows } = await this.pool.query<{ imsi: string; owner: string; epoch: number; wanted_by: string | null }>(
      'SELECT imsi, owner, epoch, wanted_by FROM sim_leases WHERE imsi = ANY($1::text[])',
      [imsis],
    );
    const gained: Array<{ imsi: string; epoch: number }> = [];
    const lost: string[] = [];
    const asked: Array<{ imsi: string; epoch: number }> = [];
    for (const r of rows) {
      const mine = this.owned.get(r.imsi);
      if (r.owner !== this.nodeId) {
        if (mine !== undefined) lost.push(r.imsi);
      } else if (r.wanted_by && r.wanted_by !== this.nodeId && mine === r.epoch) asked.push(r);
      else if (mine !== r.epoch && this.sure()) gained.push(r);
    }
    this.lose(lost);
    await this.gain(gained);
    if (asked.length === 0) return;
    // Let go here first (no more deliveries, the upstream session closed), then hand over with a new epoch.
    const imsisAsked = asked.map((a) => a.imsi);
    this.lose(imsisAsked);
    await this.beforeHandOver(imsisAsked).catch(this.onError);
    await this.pool.query(
      `UPDATE sim_leases l SET owner = l.wanted_by, epoch = l.epoch + 1, acquired_at = ${NOW_MS}, wanted_by = NULL
       FROM unnest($1::text[], $2::bigint[]) AS a(imsi, epoch)
       WHERE l.imsi = a.imsi AND l.owner = $3 AND l.epoch = a.epoch AND l.wanted_by IS NOT NULL`,
      [imsisAsked, asked.map((a) => a.epoch), this.nodeId],
    );
    await this.pool.query('SELECT pg_notify($1, imsi) FROM unnest($2::text[]) AS imsi', [CHANNELS.leases, imsisAsked]);
  }

  /** Notes SIMs as held and reads what they have waiting; tells the listeners. */
  private async gain(leases: Array<{ imsi: string; epoch: number }>): Promise<Gained[]> {
    if (leases.length === 0) return [];
    const imsis = leases.map((l) => l.imsi);
    const { rows } = await this.pool.query<{ imsi: string; rows: number; bytes: number; newest: number }>(
      'SELECT imsi, count(*) AS rows, sum(octet_length(payload)) AS bytes, max(id) AS newest FROM outbox WHERE imsi = ANY($1::text[]) GROUP BY imsi',
      [imsis],
    );
    const waiting = new Map(rows.map((r) => [r.imsi, r]));
    const gained = leases.map(({ imsi, epoch }) => ({ imsi, epoch, rows: waiting.get(imsi)?.rows ?? 0, bytes: waiting.get(imsi)?.bytes ?? 0, newest: waiting.get(imsi)?.newest ?? 0 }));
    for (const g of gained) this.hold(g.imsi, g.epoch);
    const sims = gained.filter((g) => !isStreamKey(g.imsi));
    if (sims.length) {
      for (const fn of this.gainedListeners) fn(sims);
      this.held(sims);
    }
    for (const g of sims) this.settleWaiters(g.imsi, true);
    for (const g of gained) if (isStreamKey(g.imsi)) this.streams.get(g.imsi)?.gained();
    return sims;
  }

  private lose(imsis: string[]): void {
    if (imsis.length === 0) return;
    for (const imsi of imsis) this.owned.delete(imsi);
    const sims = imsis.filter((k) => !isStreamKey(k));
    if (sims.length) for (const fn of this.lostListeners) fn(sims);
    for (const key of imsis) if (isStreamKey(key)) this.streams.get(key)?.lost();
  }

  private loseAll(): void {
    if (this.owned.size) this.reclaimOwn = true;
    this.lose([...this.owned.keys()]);
  }

  /**
   * Inside the outbox's commit transaction, after its inserts: takes the leases of the SIMs inserted for
   * that no live node holds. Answers which SIMs this node now holds (to be noted once the commit is done,
   * with what they had waiting before it) and which other nodes hold (their owners are told).
   */
  async claimInCommit(c: Queryable, imsis: string[], ownIds: number[]): Promise<{ claimed: Gained[]; foreign: string[] }> {
    const unknown = imsis.filter((i) => !this.owns(i));
    if (unknown.length === 0) return { claimed: [], foreign: [] };
    const rows = await takeFreeLeases(c, unknown, this.nodeId, this.opts.leaseMs);
    const claimedSet = new Set(rows.map((r) => r.imsi));
    const foreign = unknown.filter((i) => !claimedSet.has(i));
    if (foreign.length) await c.query('SELECT pg_notify($1, imsi) FROM unnest($2::text[]) AS imsi', ['simbridge_outbox', foreign]);
    if (rows.length === 0) return { claimed: [], foreign };
    // What the SIMs had waiting before this commit (a dead owner's backlog): read from disk once held.
    const { rows: before } = await c.query<{ imsi: string; rows: number; bytes: number; newest: number }>(
      `SELECT imsi, count(*) AS rows, sum(octet_length(payload)) AS bytes, max(id) AS newest FROM outbox
       WHERE imsi = ANY($1::text[]) AND id <> ALL($2::bigint[]) GROUP BY imsi`,
      [[...claimedSet], ownIds],
    );
    const waiting = new Map(before.map((r) => [r.imsi, r]));
    const claimed = rows.map(({ imsi, epoch }) => ({ imsi, epoch, rows: waiting.get(imsi)?.rows ?? 0, bytes: waiting.get(imsi)?.bytes ?? 0, newest: waiting.get(imsi)?.newest ?? 0 }));
    return { claimed, foreign };
  }

  /** After the commit that claimed them: the SIMs are this node's. */
  claimed(claimed: Gained[]): void {
    for (const g of claimed) this.hold(g.imsi, g.epoch);
    if (claimed.length) this.held(claimed);
  }

  /**
   * Notes a lease this node took. A heartbeat taking back its SIMs and a commit claiming one of them may
   * answer in either order; epochs only rise, so the newer of the two is the lease as it stands.
   */
  private hold(imsi: string, epoch: number): void {
    const noted = this.owned.get(imsi);
    if (noted === undefined || epoch > noted) this.owned.set(imsi, epoch);
  }

  private held(sims: Gained[]): void {
    if (this.heldListeners.length === 0) return;
    const imsis = sims.map((g) => g.imsi);
    for (const fn of this.heldListeners) fn(imsis);
  }

  /** Every node, alive or dead, with what it holds (GET /v1/cluster). */
  async nodes(): Promise<NodeStatus[]> {
    const { rows } = await this.pool.query<{ node_id: string; started_at: number; age: number; info: string; sims: number; outbox: number }>(
      `SELECT n.node_id, n.started_at, ${NOW_MS} - n.heartbeat_at AS age, n.info,
         (SELECT count(*) FROM sim_leases l WHERE l.owner = n.node_id AND ${simKey('l.imsi')}) AS sims,
         (SELECT count(*) FROM outbox o JOIN sim_leases l ON l.imsi = o.imsi WHERE l.owner = n.node_id) AS outbox
       FROM cluster_nodes n ORDER BY n.node_id`,
    );
    return rows.map((r) => ({
      nodeId: r.node_id,
      startedAt: r.started_at,
      heartbeatAgeMs: r.age,
      alive: r.age <= this.opts.leaseMs,
      simsOwned: r.sims,
      outboxRows: r.outbox,
      info: JSON.parse(r.info) as Record<string, unknown>,
    }));
  }

  /**
   * Leaves on shutdown, after the last commit: its heartbeat set to the epoch, the node is dead at once,
   * and the others take its SIMs at their next heartbeat (the leases stay, so their epochs keep rising).
   */
  async leave(): Promise<void> {
    clearInterval(this.timer);
    await this.beating;
    this.owned.clear();
    await this.pool.query('UPDATE cluster_nodes SET heartbeat_at = 0 WHERE node_id = $1', [this.nodeId]);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/**
 * Takes the leases of keys no live node holds (or that already name this node), each with a new epoch;
 * answers the keys taken. Whether the owner lives is judged by the database's clock.
 */
async function takeFreeLeases(db: Queryable, keys: string[], nodeId: string, leaseMs: number): Promise<Array<{ imsi: string; epoch: number }>> {
  const { rows } = await db.query<{ imsi: string; epoch: number }>(
    `INSERT INTO sim_leases (imsi, owner, epoch, acquired_at) SELECT key, $2, 1, ${NOW_MS} FROM unnest($1::text[]) AS key
     ON CONFLICT (imsi) DO UPDATE SET owner = excluded.owner, epoch = sim_leases.epoch + 1, acquired_at = excluded.acquired_at, wanted_by = NULL
     WHERE sim_leases.owner = excluded.owner
        OR NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id = sim_leases.owner AND n.heartbeat_at > excluded.acquired_at - $3)
     RETURNING imsi, epoch`,
    [keys, nodeId, leaseMs],
  );
  return rows;
}
