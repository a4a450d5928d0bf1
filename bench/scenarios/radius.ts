// RADIUS accounting benchmark: a sender process plays a PGW on loopback, keeping a window of signed
// Start / Interim-Update requests outstanding against the listener in this process, whose every record is
// committed with synchronous=FULL before it is answered. Runs with group commit and with one transaction
// per packet, side by side, and reports both and their ratio. The sender is bench/load/radius-sender.ts.
// Knobs: BENCH_PACKETS (200,000), BENCH_DURATION_S (15 per mode), BENCH_RADIUS_WINDOW (256),
// BENCH_RADIUS_SESSIONS (10,000), BENCH_RADIUS_SOCKETS (4).

import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { track } from '../../test/helpers/processes.ts';
import { startRadiusListener } from '../../bridge/radius/listener.ts';
import { openDatabase } from '../../storage/db.ts';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import type { ScenarioResult } from '../lib/report.ts';

const SECRET = 'bench-secret';

export interface Params {
  count: number;
  seconds: number;
  window: number;
  sessions: number;
  sockets: number;
}

export interface SenderResult {
  sent: number;
  replies: number;
  retransmits: number;
  lost: number;
  elapsedMs: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU time of the sender process over the run, as % of one core. */
  cpuPct: number;
}

// ---------------------------------------------------------------------------------------------------
// Listener side (this process), one run per commit mode.

async function runMode(groupCommit: boolean, p: Params) {
  const dir = mkdtempSync(join(tmpdir(), 'simbridge-bench-radius-'));
  const db = openDatabase({ file: join(dir, 'db.sqlite'), synchronous: 'full' });
  const listener = await startRadiusListener({ host: '127.0.0.1', port: 0, clients: [{ address: '127.0.0.0/8', secret: SECRET }], db, groupCommit });
  const child = track(
    fork(fileURLToPath(new URL('../load/radius-sender.ts', import.meta.url)), [String(listener.port), SECRET, JSON.stringify(p)], {
      execArgv: ['--import', 'tsx'],
    }),
  );
  const cpu0 = process.cpuUsage();
  const result = await new Promise<SenderResult>((resolve, reject) => {
    child.once('message', (m) => resolve(m as SenderResult));
    child.once('exit', (code) => reject(new Error(`sender exited with ${code}`)));
  });
  const cpu = process.cpuUsage(cpu0);
  // Includes the sender's start-up (a second or so of idling here): a slight underestimate.
  const listenerCpuPct = ((cpu.user + cpu.system) / 1000 / result.elapsedMs) * 100;
  child.kill();
  const sessions = listener.sessions.count();
  const counters = structuredClone(listener.counters);
  await listener.close();
  db.close();
  rmSync(dir, { recursive: true, force: true });
  return { ...result, packetsPerS: (result.replies / result.elapsedMs) * 1000, sessions, counters, listenerCpuPct };
}

async function radius(ctx: Ctx): Promise<ScenarioResult> {
  const p: Params = {
    count: knob('PACKETS', 200_000, 20_000, ctx),
    seconds: knob('DURATION_S', 15, 3, ctx),
    window: knob('RADIUS_WINDOW', 256, 256, ctx),
    sessions: knob('RADIUS_SESSIONS', 10_000, 10_000, ctx),
    sockets: knob('RADIUS_SOCKETS', 4, 4, ctx),
  };
  const group = await runMode(true, p);
  const single = await runMode(false, p);
  for (const [name, r] of [['group commit', group], ['one transaction per packet', single]] as const) {
    ctx.log(`  ${name}: ${r.replies} replies in ${(r.elapsedMs / 1000).toFixed(1)} s = ${r.packetsPerS.toFixed(0)} packets/s, ack p50 ${r.p50Ms.toFixed(2)} ms p99 ${r.p99Ms.toFixed(2)} ms, ${r.counters.commits} commits, ${r.retransmits} retransmits, ${r.lost} lost, CPU listener ${r.listenerCpuPct.toFixed(0)}% sender ${r.cpuPct.toFixed(0)}%`);
  }
  const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
  const report = {
    params: { ...p, synchronous: 'full', transport: 'udp loopback, sender in a separate process' },
    figures: {
      packets_per_s: round(group.packetsPerS, 0),
      packets_per_s_one_txn_per_packet: round(single.packetsPerS, 0),
      group_commit_speedup_ratio: round(group.packetsPerS / single.packetsPerS, 2),
      records_per_commit: round(group.counters.accepted / Math.max(1, group.counters.commits), 1),
      listener_cpu_pct: round(group.listenerCpuPct, 0),
      sender_cpu_pct: round(group.cpuPct, 0),
      ack_p50_ms: round(group.p50Ms, 2),
      ack_p99_ms: round(group.p99Ms, 2),
      ack_p50_ms_one_txn_per_packet: round(single.p50Ms, 2),
      ack_p99_ms_one_txn_per_packet: round(single.p99Ms, 2),
      replies_count: group.replies,
      replies_count_one_txn_per_packet: single.replies,
      retransmits_count: group.retransmits + single.retransmits,
      lost_count: group.lost + single.lost,
    },
  };
  const f = report.figures;
  return {
    ...report,
    extraMd: `## Modes

A sender process keeps ${p.window} signed Start/Interim-Update requests in flight over loopback UDP
(${p.sockets} sockets, ${p.sessions} sessions); every record is committed to SQLite (WAL, synchronous=FULL)
before its Accounting-Response. Limits: ${p.count} packets or ${p.seconds} s per mode.

| mode | packets/s | ack p50 ms | ack p99 ms | replies |
|---|---:|---:|---:|---:|
| group commit (default) | ${f.packets_per_s} | ${f.ack_p50_ms} | ${f.ack_p99_ms} | ${f.replies_count} |
| one transaction per packet | ${f.packets_per_s_one_txn_per_packet} | ${f.ack_p50_ms_one_txn_per_packet} | ${f.ack_p99_ms_one_txn_per_packet} | ${f.replies_count_one_txn_per_packet} |

Group commit: ×${f.group_commit_speedup_ratio} (${f.records_per_commit} records per commit on average); CPU with
group commit: listener ${f.listener_cpu_pct}% and sender ${f.sender_cpu_pct}% of one core.
Retransmits ${f.retransmits_count}, lost ${f.lost_count}.
`,
  };
}

export const scenario: Scenario = { title: 'RADIUS accounting packets per second with durable session updates', run: radius };
