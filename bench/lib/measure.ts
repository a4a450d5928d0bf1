import { randomBytes } from 'node:crypto';
import { nowMs } from './devices.ts';
import type { Collector } from './collector.ts';
import { quantile } from './hist.ts';
import type { LoadPool, MergedRun } from './load.ts';
import { cpuSeconds, cpuShareMeter, listenOverflows, rssPeak, type CpuShares } from './procstat.ts';

export function newTag(prefix: string): string {
  return prefix + randomBytes(3).toString('hex');
}

export interface RunFigures {
  /** Unique messages delivered upstream per second, first send to last delivery (or to the end of sending, if later). */
  msgs_per_s: number;
  /** Device acknowledgements per second while sending. */
  acked_msgs_per_s: number;
  ack_p50_ms: number | null;
  ack_p99_ms: number | null;
  e2e_p50_ms: number | null;
  e2e_p99_ms: number | null;
  /** CPU of the measured process (simbridge, or the bridge Mosquitto) per delivered message. */
  cpu_us_per_msg: number | null;
  /** CPU of the measured process over the run, % of one core (100 = one core busy). */
  cpu_pct: number | null;
  rss_peak_kb: number | null;
  sent: number;
  acked: number;
  delivered: number;
  duplicates: number;
  /** Acknowledged but not delivered when the wait ended (should be 0 in a healthy run). */
  undelivered: number;
  errors: number;
  /** Machine-wide accept-queue overflows during the run (SYNs dropped: the client retries after 1 s, 3 s, ...). */
  listen_overflows: number | null;
  /** Readings (device messages) per 5 KB billing unit upstream: 1 without batching. */
  readings_per_billed_unit: number | null;
  /** Where the machine's CPU went over the same span as cpu_pct, by role (see cpuShareMeter). */
  cpu_shares: CpuShares;
  run: MergedRun;
}

/**
 * One measured run: the load runs (closed loop or paced), then we wait (bounded) until everything
 * acknowledged has arrived upstream. CPU is counted from the start until the last delivery, so the
 * cost of draining what the run queued is included.
 */
export async function measuredRun(
  collector: Collector,
  load: LoadPool,
  opts: {
    tag: string;
    mode: 'closed' | 'paced';
    window: number;
    ratePerS?: number;
    durationMs: number;
    payloadBytes: number;
    perDeviceMax?: number;
    /** Process whose CPU and RSS are measured. */
    pid?: number;
    drainTimeoutMs?: number;
    /** Stop waiting for stragglers after this long without any arrival. */
    quietMs?: number;
  },
): Promise<RunFigures> {
  const stats = collector.stats(opts.tag);
  const cpu0 = opts.pid ? cpuSeconds(opts.pid) : null;
  const shares = cpuShareMeter(opts.pid);
  const lo0 = listenOverflows();
  const rss = opts.pid ? rssPeak(opts.pid) : undefined;
  const run = await load.run({
    tag: opts.tag,
    mode: opts.mode,
    window: opts.window,
    ratePerS: opts.ratePerS,
    durationMs: opts.durationMs,
    perDeviceMax: opts.perDeviceMax ?? 10_000_000,
    tailMs: 15_000,
    payloadBytes: opts.payloadBytes,
  });
  await collector.waitUntil(() => stats.unique >= run.acked, { timeoutMs: opts.drainTimeoutMs ?? 120_000, quietMs: opts.quietMs ?? 20_000 });
  const cpu1 = opts.pid ? cpuSeconds(opts.pid) : null;
  const cpuShares = shares.stop();
  const rssKb = rss?.stop() ?? null;
  // Never shorter than the sending: a path that stalls early (e.g. an upstream that drops the excess
  // without PUBACK) delivered its few messages over the whole run, not over its first second.
  const spanS = Math.max(0.001, (Math.max(stats.lastAt, run.sendingEndedAt) - run.startedAt) / 1000);
  return {
    msgs_per_s: stats.unique / spanS,
    acked_msgs_per_s: run.acked / Math.max(0.001, (run.sendingEndedAt - run.startedAt) / 1000),
    ack_p50_ms: quantile(run.ackHist, 0.5),
    ack_p99_ms: quantile(run.ackHist, 0.99),
    e2e_p50_ms: quantile(stats.e2e, 0.5),
    e2e_p99_ms: quantile(stats.e2e, 0.99),
    cpu_us_per_msg: cpu0 !== null && cpu1 !== null && stats.unique > 0 ? ((cpu1 - cpu0) * 1e6) / stats.unique : null,
    cpu_pct: cpu0 !== null && cpu1 !== null ? ((cpu1 - cpu0) * 100) / ((nowMs() - run.startedAt) / 1000) : null,
    rss_peak_kb: rssKb,
    sent: run.sent,
    acked: run.acked,
    delivered: stats.unique,
    duplicates: stats.duplicates,
    undelivered: Math.max(0, run.acked - stats.unique),
    errors: run.errors,
    listen_overflows: lo0 === null ? null : (listenOverflows() ?? lo0) - lo0,
    readings_per_billed_unit: stats.billedUnits ? stats.unique / stats.billedUnits : null,
    cpu_shares: cpuShares,
    run,
  };
}

/** Every device sends one message and we wait until all have arrived: vending done, sessions warm. */
export async function warmUp(collector: Collector, load: LoadPool, devices: number, timeoutMs = 120_000): Promise<void> {
  const tag = newTag('w');
  const stats = collector.stats(tag);
  const run = await load.run({ tag, mode: 'closed', window: 1, durationMs: timeoutMs, perDeviceMax: 1, tailMs: 0, payloadBytes: 64 });
  const ok = await collector.waitUntil(() => stats.unique >= devices, { timeoutMs });
  if (!ok || run.acked < devices) throw new Error(`warm-up: ${run.acked}/${devices} acknowledged, ${stats.unique} delivered upstream`);
}
