import type { Statement } from 'better-sqlite3';
import type { AuditKind } from './audit.ts';
import type { Db } from './db.ts';
import type { EndedSession, NetworkSession } from './network-sessions.ts';

/**
 * The gateway's own lifecycle events (docs/events.md) ride in the outbox under this key instead of a
 * SIM's IMSI: no IMSI starts with "@", so they never mix with a device's rows, and the SIM dispatcher
 * never sees them (they are not counted at load, and not announced by the group commit).
 */
export const GATEWAY_OUTBOX_KEY = '@gateway';

/** What a store reports to the event tap, inside the transaction that made the change. */
export type EventFact =
  | { source: 'audit'; kind: AuditKind; imsi: string | null; detail: Record<string, unknown>; at: number }
  | { source: 'network'; change: 'start'; session: NetworkSession; at: number }
  | { source: 'network'; change: 'stop'; session: NetworkSession; cause: EndedSession['cause']; at: number }
  | { source: 'outbox'; change: 'dead_letter' | 'dropped'; message: LeftMessage; reason: string; at: number };

/** A device message that left the outbox undelivered (dead-lettered, or dropped by a full outbox). */
export interface LeftMessage {
  id: number;
  imsi: string;
  deviceTopic: string;
  bytes: number;
  receivedAt: number;
}

/** An event ready for IoT Core: its upstream topic and its JSON payload (rendered and masked above storage). */
export interface RenderedEvent {
  topic: string;
  payload: Buffer;
}

/** Turns a fact into an event, or undefined when it is none (or its kind is not published). */
export type EventRenderer = (fact: EventFact) => RenderedEvent | undefined;

interface Tap {
  render: EventRenderer;
  insert: Statement<[string, string, Buffer, number]>;
  queued: () => void;
  announce: boolean;
}

// One tap per database: every store over it (the audit log, the credentials' own audit writer, the
// network sessions) reaches the same one without being handed it.
const taps = new WeakMap<Db, Tap>();

/**
 * Starts turning the facts stores record on this database into outbox rows, each in the transaction of
 * the change it reports. `queued` is called (once per burst, after the transaction) when rows were added.
 * Returns the removal.
 */
export function tapEvents(db: Db, render: EventRenderer, queued: () => void): () => void {
  const insert = db.prepare<[string, string, Buffer, number]>('INSERT INTO outbox (imsi, device_topic, payload, qos, received_at, system) VALUES (?, ?, ?, 1, ?, 1)');
  taps.set(db, { render, insert, queued, announce: false });
  return () => taps.delete(db);
}

/** Whether facts recorded on this database become events (stores skip the extra savepoint otherwise). */
export function eventsTapped(db: Db): boolean {
  return taps.has(db);
}

/** Records the fact's event, if it is one; call inside the transaction that makes the change. */
export function queueEvent(db: Db, fact: EventFact): void {
  const tap = taps.get(db);
  if (!tap) return;
  const event = tap.render(fact);
  if (!event) return;
  tap.insert.run(GATEWAY_OUTBOX_KEY, event.topic, event.payload, fact.at);
  if (tap.announce) return;
  tap.announce = true;
  // better-sqlite3 transactions are synchronous: by the next turn the row is committed (or rolled back).
  setImmediate(() => {
    tap.announce = false;
    tap.queued();
  });
}

/** The network sessions a change began and ended, as facts for the tap. */
export function queueSessionEvents(db: Db, started: NetworkSession | undefined, ended: EndedSession[]): void {
  if (!taps.has(db)) return;
  const at = Date.now();
  for (const e of ended) queueEvent(db, { source: 'network', change: 'stop', session: e.session, cause: e.cause, at });
  if (started) queueEvent(db, { source: 'network', change: 'start', session: started, at });
}

/** A queued event as its publisher reads it. */
export interface QueuedEvent {
  id: number;
  topic: string;
  payload: Buffer;
}

/** The gateway's events in the outbox, oldest first, and their removal once IoT Core acknowledged them. */
export interface EventQueue {
  peek(limit: number): Promise<QueuedEvent[]>;
  remove(id: number): Promise<void>;
  count(): Promise<number>;
}

/** The events of one database: where they wait, and the start of their recording. */
export interface EventStream {
  queue: EventQueue;
  /**
   * Starts turning the facts stores record into events. `queued` is called when events may be waiting
   * for this node to publish, `lost` when this node stops being the one that publishes them (several
   * nodes on PostgreSQL: storage/postgres/events.ts). Returns the removal.
   */
  tap(render: EventRenderer, on: { queued(): void; lost(): void }): () => void;
}

/** One gateway on SQLite: it publishes every event it records. */
export function sqliteEventStream(db: Db): EventStream {
  return { queue: new SqliteEventQueue(db), tap: (render, on) => tapEvents(db, render, on.queued) };
}

export class SqliteEventQueue implements EventQueue {
  private readonly peekStmt;
  private readonly removeStmt;
  private readonly countStmt;

  constructor(db: Db) {
    this.peekStmt = db.prepare<[string, number], QueuedEvent>('SELECT id, device_topic AS topic, payload FROM outbox WHERE imsi = ? ORDER BY id LIMIT ?');
    this.removeStmt = db.prepare<[number, string]>('DELETE FROM outbox WHERE id = ? AND imsi = ?');
    this.countStmt = db.prepare<[string]>('SELECT COUNT(*) FROM outbox WHERE imsi = ?').pluck();
  }

  async peek(limit: number): Promise<QueuedEvent[]> {
    return this.peekStmt.all(GATEWAY_OUTBOX_KEY, limit);
  }

  async remove(id: number): Promise<void> {
    this.removeStmt.run(id, GATEWAY_OUTBOX_KEY);
  }

  async count(): Promise<number> {
    return this.countStmt.get(GATEWAY_OUTBOX_KEY) as number;
  }
}
