import { schedule, type ScheduledTask } from 'node-cron';
import type { Logger } from 'pino';
import type { z } from 'zod';
import type { retentionSection } from '../config/admin.ts';
import { retentionTable, type RetentionStore, type RetentionTarget } from '../storage/retention.ts';

export type RetentionConfig = z.infer<typeof retentionSection>;

const AGES: Record<RetentionTarget, (c: RetentionConfig) => number> = {
  audit: (c) => c.auditDays,
  deadLetters: (c) => c.deadLetterDays,
  networkSessions: (c) => c.networkSessionDays,
};

// Deleting in chunks keeps each write transaction short, so device commits are never held up for long.
const CHUNK = 5000;
const DAY_MS = 86_400_000;

export type RetentionResult = Record<RetentionTarget, number>;

export interface RetentionJob {
  /** Deletes what is past its age now. */
  runOnce(): Promise<RetentionResult>;
  stop(): void;
}

/** Deletes old audit events, dead letters and ended network sessions on the configured cron schedule. */
export function startRetention(store: RetentionStore, config: RetentionConfig, log: Logger, onDeleted?: (table: string, n: number) => void): RetentionJob {
  let running: Promise<RetentionResult> | undefined;
  const runOnce = () =>
    (running ??= sweep(store, config, onDeleted).finally(() => (running = undefined)).then((r) => {
      if (Object.values(r).some((n) => n > 0)) log.info({ deleted: r }, 'retention: old rows deleted');
      return r;
    }));
  const task: ScheduledTask | undefined = config.enabled
    ? schedule(config.schedule, () => runOnce().catch((err) => log.error({ err: String(err) }, 'retention failed')), { name: 'simbridge-retention', noOverlap: true })
    : undefined;
  return {
    runOnce,
    stop: () => void task?.destroy(),
  };
}

async function sweep(store: RetentionStore, config: RetentionConfig, onDeleted?: (table: string, n: number) => void): Promise<RetentionResult> {
  const result: RetentionResult = { audit: 0, deadLetters: 0, networkSessions: 0 };
  for (const target of Object.keys(AGES) as RetentionTarget[]) {
    const days = AGES[target](config);
    if (days === 0) continue;
    const cutoff = Date.now() - days * DAY_MS;
    for (;;) {
      const n = await store.purgeBefore(target, cutoff, CHUNK);
      result[target] += n;
      if (n < CHUNK) break;
      await new Promise((r) => setImmediate(r)); // let device traffic through between chunks
    }
    if (result[target]) onDeleted?.(retentionTable(target), result[target]);
  }
  return result;
}
