import { deviceSent } from '../activity.ts';
import { GATEWAY_OUTBOX_KEY } from '../events.ts';
import { queueSummarySql, type DeadLetterSummary, type OutboxStats, type QueueSummary, type SimQueue } from '../outbox-stats.ts';
import type { Queryable } from './connect.ts';

export class PgOutboxStats implements OutboxStats {
  constructor(private readonly db: Queryable) {}

  async summary(): Promise<QueueSummary> {
    const { rows } = await this.db.query<{ depth: number; sims: number; oldest: number | null; events: number }>(queueSummarySql('$1'), [GATEWAY_OUTBOX_KEY]);
    const r = rows[0]!;
    return { depth: r.depth, sims: r.sims, oldestReceivedAt: r.oldest, events: r.events };
  }

  async ofSim(imsi: string): Promise<SimQueue> {
    const { rows } = await this.db.query<{ depth: number; oldest: number | null; newest: number | null }>(
      `SELECT count(*) AS depth, min(received_at) AS oldest, max(CASE WHEN ${deviceSent('o')} THEN received_at END) AS newest FROM outbox o WHERE imsi = $1`,
      [imsi],
    );
    const r = rows[0]!;
    return { depth: r.depth, oldestReceivedAt: r.oldest, newestFromDevice: r.newest };
  }

  async deadLetters(since: number): Promise<DeadLetterSummary> {
    const { rows } = await this.db.query<DeadLetterSummary>('SELECT count(*) AS total, count(CASE WHEN failed_at >= $1 THEN 1 END) AS recent FROM dead_letters', [since]);
    return rows[0]!;
  }
}
