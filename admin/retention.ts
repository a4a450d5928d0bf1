import { schedule, type ScheduledTask } from 'node-cron';
import type { Logger } from 'pino';
import type { z } from 'zod';
import type { retentionSection } from '../config/admin.ts';
import type { Db } from '../storage/db.ts';

export type RetentionConfig = z.infer<typeof retentionSection>;

interface Rule {
  name: 'audit' | 'deadLetters' | 'networkSessions';
  table: string;
  /** Primary key used to delete in chunks (network_sessions is WITHOUT ROWID). */
  key: string;
  /** Column holding the time the row became eligible (ms since epoch). */
  column: string;
  days(c: RetentionConfig): number;
}

const RULES: Rule[] = [
  { name: 'audit', table: 'audit', key: 'id', column: 'at', days: (c) => c.auditDays },
  { name: 'deadLetters', table: 'dead_letters', key: 'id', column: 'failed_at', days: (c) => c.deadLetterDays },
  // Live sessions are never touched: only rows the network has ended (ended_at set) age out. A schema
  // without ended_at deletes sessions as they end, and the rule has nothing to do.
  { name: 'networkSessions', table: 'network_sessions', key: 'ip', column: 'ended_at', days: (c) => c.networkSessionDays },
];

// Deleting in chunks keeps each write transaction short, so device commits are never held up for long.
const CHUNK = 5000;
const DAY_MS = 86_400_000;

export type RetentionResult = Record<Rule['name'], number>;

export interface RetentionJob {
  /** Deletes what is past its age now. */
  runOnce(): Promise<RetentionResult>;
  stop(): void;
}

/** Deletes old audit events, dead letters and ended network sessions on the configured cron schedule. */
export function startRetention(db: Db, config: RetentionConfig, log: Logger, onDeleted?: (table: string, n: number) => void): RetentionJob {
  let running: Promise<RetentionResult> | undefined;
  const runOnce = () =>
    (running ??= sweep(db, config, onDeleted).finally(() => (running = undefined)).then((r) => {
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

async function sweep(db: Db, config: RetentionConfig, onDeleted?: (table: string, n: number) => void): Promise<RetentionResult> {
  const result: RetentionResult = { audit: 0, deadLetters: 0, networkSessions: 0 };
  for (const rule of RULES) {
    const days = rule.days(config);
    if (days === 0 || !hasColumn(db, rule.table, rule.column)) continue;
    const cutoff = Date.now() - days * DAY_MS;
    const del = db.prepare(
      `DELETE FROM ${rule.table} WHERE ${rule.key} IN (SELECT ${rule.key} FROM ${rule.table} WHERE ${rule.column} IS NOT NULL AND ${rule.column} < ? LIMIT ${CHUNK})`,
    );
    for (;;) {
      if (!db.open) return result;
      const n = del.run(cutoff).changes;
      result[rule.name] += n;
      if (n < CHUNK) break;
      await new Promise((r) => setImmediate(r)); // let device traffic through between chunks
    }
    if (result[rule.name]) onDeleted?.(rule.table, result[rule.name]);
  }
  return result;
}

function hasColumn(db: Db, table: string, column: string): boolean {
  return (db.prepare(`SELECT count(*) FROM pragma_table_info(?) WHERE name = ?`).pluck().get(table, column) as number) > 0;
}
