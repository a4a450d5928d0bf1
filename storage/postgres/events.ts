import type { AuditKind } from '../audit.ts';
import type { EndedSession, NetworkSession } from '../network-sessions.ts';
import { GATEWAY_OUTBOX_KEY, type EventFact, type EventQueue, type EventStream, type EventRenderer, type QueuedEvent } from '../events.ts';
import { CHANNELS, type ChangeFeed } from './changes.ts';
import type { ClusterNode } from './cluster.ts';
import type { Pool, Queryable } from './connect.ts';

// The gateway's lifecycle events on PostgreSQL (docs/events.md, docs/cluster.md). As on SQLite, every
// store reports its facts inside the transaction of the change, and the event is an outbox row under
// GATEWAY_OUTBOX_KEY in that same transaction. Any node may commit events; one node publishes them all.

// One tap per pool: every store over it reaches the same one without being handed it.
const taps = new WeakMap<object, EventRenderer>();

/** Whether facts recorded over this pool become events (stores skip the extra transaction otherwise). */
export function pgEventsTapped(pool: object): boolean {
  return taps.has(pool);
}

/** Events rendered, ready to insert. */
export interface RenderedEvents {
  topics: string[];
  payloads: Buffer[];
  at: number[];
}

/** The facts' events as the tap renders them (once: each gets its eventId); undefined when none is one. */
export function renderPgEvents(pool: object, facts: EventFact[]): RenderedEvents | undefined {
  const render = taps.get(pool);
  if (!render) return undefined;
  const events: RenderedEvents = { topics: [], payloads: [], at: [] };
  for (const fact of facts) {
    const event = render(fact);
    if (!event) continue;
    events.topics.push(event.topic);
    events.payloads.push(event.payload);
    events.at.push(fact.at);
  }
  return events.topics.length ? events : undefined;
}

/**
 * Writes events on `c`, a connection inside the transaction that makes their change; at commit the node
 * publishing events hears of them (NOTIFY, on whichever node it runs).
 */
export async function insertPgEvents(c: Queryable, events: RenderedEvents | undefined): Promise<void> {
  if (!events) return;
  await c.query({
    name: 'simbridge_queue_events',
    text: `WITH queued AS (
             INSERT INTO outbox (imsi, device_topic, payload, qos, received_at, system)
             SELECT $1, e.topic, e.payload, 1, e.at, 1 FROM unnest($2::text[], $3::bytea[], $4::bigint[]) WITH ORDINALITY AS e(topic, payload, at, n)
             ORDER BY e.n RETURNING id)
           SELECT pg_notify($5, $1) FROM queued LIMIT 1`,
    values: [GATEWAY_OUTBOX_KEY, events.topics, events.payloads, events.at, CHANNELS.events],
  });
}

/** Renders the facts and writes their events on `c`, inside the transaction of their change. */
export async function queuePgEvents(pool: object, c: Queryable, facts: EventFact[]): Promise<void> {
  await insertPgEvents(c, renderPgEvents(pool, facts));
}

/**
 * The facts an audit row reports, inside its commit. A drop-oldest on PostgreSQL reports none in its
 * own transaction (storage/postgres/outbox.ts dropOldest): its event rides in the commit of the drop's
 * `message_dropped` audit row, written for each dropped row just after (bridge/uplink.ts), as the
 * registration's event rides in its audit row's commit (docs/events.md).
 */
export function auditFacts(kind: AuditKind, imsi: string | null, detail: Record<string, unknown>, at: number): EventFact[] {
  if (kind === 'message_dropped' && imsi !== null) {
    const message = { id: Number(detail.id), imsi, deviceTopic: String(detail.topic), bytes: Number(detail.bytes), receivedAt: Number(detail.receivedAt) };
    return [{ source: 'outbox', change: 'dropped', message, reason: String(detail.reason ?? 'outbox full (drop-oldest)'), at }];
  }
  return [{ source: 'audit', kind, imsi, detail, at }];
}

/** The network sessions a change began and ended, as facts (stops first, as on SQLite). */
export function sessionFacts(started: NetworkSession | undefined, ended: EndedSession[]): EventFact[] {
  const at = Date.now();
  const facts: EventFact[] = ended.map((e) => ({ source: 'network', change: 'stop', session: e.session, cause: e.cause, at }));
  if (started) facts.push({ source: 'network', change: 'start', session: started, at });
  return facts;
}

/**
 * The gateway's events on one database shared by several nodes. The node that holds the lease of
 * GATEWAY_OUTBOX_KEY (sim_leases, the SIMs' lease machinery of storage/postgres/cluster.ts) publishes
 * every node's events: IoT Core allows one connection per client id, and the gateway's thing is one
 * client id, so two nodes publishing as it would knock each other off; and a node's events must not wait
 * for that node to come back. The lease moves when its holder dies, as a SIM's does.
 */
export class PgEventStream implements EventStream {
  readonly queue: EventQueue;

  constructor(
    private readonly pool: Pool,
    private readonly cluster: ClusterNode,
    private readonly feed: ChangeFeed,
  ) {
    this.queue = {
      peek: (limit) => this.peek(limit),
      remove: (id) => this.remove(id),
      count: () => this.count(),
    };
  }

  /**
   * Starts recording facts as events, and publishing here while this node holds the events' lease:
   * `queued` is called when events may be waiting for this node to publish (committed by any node, or
   * the lease just gained), `lost` when another node publishes from now on. Returns the removal.
   */
  tap(render: EventRenderer, on: { queued(): void; lost(): void }): () => void {
    taps.set(this.pool, render);
    let tapped = true;
    const queued = () => tapped && this.holds() && on.queued();
    this.feed.on(CHANNELS.events, queued);
    // Notices missed while the feed was down: look again.
    this.feed.onResync(async () => void queued());
    this.cluster.serveStream(GATEWAY_OUTBOX_KEY, { gained: queued, lost: () => tapped && on.lost() });
    return () => {
      tapped = false;
      taps.delete(this.pool);
    };
  }

  private holds(): boolean {
    return this.cluster.owns(GATEWAY_OUTBOX_KEY);
  }

  private async peek(limit: number): Promise<QueuedEvent[]> {
    if (!this.holds()) return [];
    const { rows } = await this.pool.query<QueuedEvent>('SELECT id, device_topic AS topic, payload FROM outbox WHERE imsi = $1 ORDER BY id LIMIT $2', [GATEWAY_OUTBOX_KEY, limit]);
    return rows;
  }

  /**
   * An event IoT Core acknowledged leaves the outbox whoever holds the lease now: it is delivered, and a
   * node that lost the lease meanwhile deleting it spares its next holder a repeat. What the lease fences
   * is publishing (peek), so two nodes never publish as the one gateway thing at once.
   */
  private async remove(id: number): Promise<void> {
    await this.pool.query('DELETE FROM outbox WHERE id = $1 AND imsi = $2', [id, GATEWAY_OUTBOX_KEY]);
  }

  /** Events waiting across the cluster (committed, not yet acknowledged by IoT Core). */
  private async count(): Promise<number> {
    const { rows } = await this.pool.query<{ n: number }>('SELECT count(*) AS n FROM outbox WHERE imsi = $1', [GATEWAY_OUTBOX_KEY]);
    return rows[0]!.n;
  }
}
