import { deviceSent } from './activity.ts';
import type { Db } from './db.ts';
import { GATEWAY_OUTBOX_KEY } from './events.ts';

export interface QueueSummary {
  /** Device messages waiting (the gateway's own events are counted apart, in `events`). */
  depth: number;
  /** SIMs with messages waiting. */
  sims: number;
  oldestReceivedAt: number | null;
  /** The gateway's lifecycle events waiting (queued under the reserved key, not a SIM's). */
  events: number;
}

/**
 * One pass over the outbox splitting device rows from the gateway's events; `key` is the dialect's
 * placeholder of the reserved key (`@key` in SQLite, `$1` in PostgreSQL). Shared so the split cannot drift.
 */
export const queueSummarySql = (key: string): string =>
  `SELECT count(CASE WHEN imsi <> ${key} THEN 1 END) AS depth, count(DISTINCT CASE WHEN imsi <> ${key} THEN imsi END) AS sims, ` +
  `min(CASE WHEN imsi <> ${key} THEN received_at END) AS oldest, count(CASE WHEN imsi = ${key} THEN 1 END) AS events FROM outbox`;

export interface SimQueue {
  depth: number;
  oldestReceivedAt: number | null;
  /** Newest waiting message the device sent itself (not one the gateway queued for it). */
  newestFromDevice: number | null;
}

export interface DeadLetterSummary {
  total: number;
  /** Dead-lettered at or after the `since` asked for. */
  recent: number;
}

/** Read-only figures about the outbox and the dead letters, for the admin surface (never the hot path). */
export interface OutboxStats {
  summary(): Promise<QueueSummary>;
  ofSim(imsi: string): Promise<SimQueue>;
  /** Dead letters in all, and those since the given time (ms since epoch). */
  deadLetters(since: number): Promise<DeadLetterSummary>;
}

export class SqliteOutboxStats {
  constructor(private readonly db: Db) {}

  summary(): QueueSummary {
    const r = this.db.prepare(queueSummarySql('@key')).get({ key: GATEWAY_OUTBOX_KEY }) as { depth: number; sims: number; oldest: number | null; events: number };
    return { depth: r.depth, sims: r.sims, oldestReceivedAt: r.oldest, events: r.events };
  }

  ofSim(imsi: string): SimQueue {
    const r = this.db
      .prepare(`SELECT count(*) AS depth, min(received_at) AS oldest, max(CASE WHEN ${deviceSent('o')} THEN received_at END) AS newest FROM outbox o WHERE imsi = ?`)
      .get(imsi) as { depth: number; oldest: number | null; newest: number | null };
    return { depth: r.depth, oldestReceivedAt: r.oldest, newestFromDevice: r.newest };
  }

  deadLetters(since: number): DeadLetterSummary {
    return this.db.prepare('SELECT count(*) AS total, count(CASE WHEN failed_at >= ? THEN 1 END) AS recent FROM dead_letters').get(since) as DeadLetterSummary;
  }
}
