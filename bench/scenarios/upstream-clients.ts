import { knob, knobList, type Ctx, type Scenario } from '../lib/context.ts';
import { devices, SIMBRIDGE_TOPIC } from '../lib/devices.ts';
import { LoadPool } from '../lib/load.ts';
import { measuredRun, newTag, warmUp, type RunFigures } from '../lib/measure.ts';
import type { ScenarioResult } from '../lib/report.ts';
import { gatewaySource, Stack, type Tree } from '../lib/stack.ts';
import { putSummary, round } from '../lib/stats.ts';

/** The upstream client settings compared, by the key their figures carry. */
const CLIENTS: Array<{ key: string; text: string; upstream: Tree }> = [
  { key: 'node_main', text: 'node, main event loop', upstream: { client: 'node', threads: 0 } },
  { key: 'node_thread', text: 'node, 1 connection thread (default)', upstream: { client: 'node', threads: 1 } },
  { key: 'aws_crt', text: 'aws-crt, 1 connection thread', upstream: { client: 'aws-crt', threads: 1 } },
];

/**
 * The upstream client settings side by side (issue 19): 1,000 MQTT devices offer fixed rates, QoS 1, and
 * each setting is measured at each rate, in rounds that interleave the settings so that the machine's
 * drift spreads over all of them. What one message costs depends on how many arrive per wake-up of each
 * thread, so the settings are compared at the same rates rather than each at its own saturation.
 */
export async function upstreamClients(ctx: Ctx): Promise<ScenarioResult> {
  const n = knob('DEVICES', 1000, 200, ctx);
  const rates = knobList('RATES', [1000, 2000, 3300, 4200], [500, 1000], ctx);
  const rounds = knob('ROUNDS', 2, 1, ctx);
  const durationMs = knob('DURATION_S', 8, 4, ctx) * 1000;
  const runs = new Map<string, RunFigures[]>();
  const stack = await Stack.start();
  try {
    for (let round_ = 0; round_ < rounds; round_++) {
      for (const client of CLIENTS) {
        const gw = await stack.startGateway({ override: { upstream: client.upstream } });
        const load = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: gw.mqttPort }, devices(n, 1, SIMBRIDGE_TOPIC), { workers: 2 });
        try {
          await warmUp(stack.collector, load, n);
          for (const rate of rates) {
            const f = await measuredRun(stack.collector, load, { tag: newTag('u'), mode: 'paced', window: 100, ratePerS: rate, durationMs, payloadBytes: 200, pid: gw.pid });
            const key = `${client.key}_${rate}`;
            runs.set(key, [...(runs.get(key) ?? []), f]);
            ctx.log(
              `  round ${round_ + 1}/${rounds}, ${client.text}, ${rate}/s: ${round(f.msgs_per_s)} msgs/s, ${round(f.cpu_us_per_msg ?? NaN)} µs CPU/msg, ` +
                `ack p50/p99 ${f.ack_p50_ms}/${f.ack_p99_ms} ms, main thread ran ${f.cpu_shares.main_thread_run_pct} % and waited ${f.cpu_shares.main_thread_runq_wait_pct} %`,
            );
          }
        } finally {
          await load.close();
        }
        await stack.stopGateway('SIGTERM');
      }
    }
  } finally {
    await stack.close();
  }
  const figures: Record<string, number | null> = {};
  for (const rate of rates) {
    for (const client of CLIENTS) {
      const rs = runs.get(`${client.key}_${rate}`) ?? [];
      const at = `${client.key}_at_${rate}`;
      putSummary(figures, `msgs_per_s_${at}`, rs.map((r) => r.msgs_per_s));
      putSummary(figures, `cpu_us_per_msg_${at}`, rs.map((r) => r.cpu_us_per_msg));
      putSummary(figures, `ack_p50_ms_${at}`, rs.map((r) => r.ack_p50_ms));
      putSummary(figures, `ack_p99_ms_${at}`, rs.map((r) => r.ack_p99_ms));
      putSummary(figures, `main_thread_run_pct_${at}`, rs.map((r) => r.cpu_shares.main_thread_run_pct));
      putSummary(figures, `main_thread_runq_wait_pct_${at}`, rs.map((r) => r.cpu_shares.main_thread_runq_wait_pct));
    }
  }
  figures.undelivered = [...runs.values()].flat().reduce((a, r) => a + r.undelivered, 0);
  figures.duplicates = [...runs.values()].flat().reduce((a, r) => a + r.duplicates, 0);
  return {
    params: {
      quick: ctx.quick,
      gateway_commit: gatewaySource().commit,
      devices: n,
      qos: 1,
      payload_bytes: 200,
      rates_per_s: rates.join(', '),
      run_s: durationMs / 1000,
      rounds,
      clients: CLIENTS.map((c) => `${c.key}: ${c.text}`).join('; '),
      storage_synchronous: 'full',
    },
    figures,
    notes: [
      'Each round starts simbridge once per client setting (the data directory and so the devices\' certificates are kept: only the first start vends), connects the 1,000 devices, warms their upstream sessions, then offers each rate for `run_s` seconds. Figures are medians over the rounds.',
      '`cpu_us_per_msg_<client>_at_<rate>`: simbridge\'s CPU (every thread) per message delivered upstream. `main_thread_run_pct_…` / `main_thread_runq_wait_pct_…`: how long the main thread ran, and how long it was ready to run but waited for a core, % of the run (see throughput-mqtt).',
      '`node_main` holds every upstream TLS session on the main event loop: no thread hop per publish, so the least CPU, but one thread does all of it and on this 2-core machine, shared with the whole test bed, it is the first to run out. The thread settings spread the work over two threads at the cost of a hand-off each way per batch of publishes.',
    ],
  };
}

export const scenario: Scenario = { title: 'upstream client settings side by side at fixed rates: CPU per message and acknowledgement latency', run: upstreamClients };
