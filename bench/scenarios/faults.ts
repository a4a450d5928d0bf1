import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import type { Collector, TagStats } from '../lib/collector.ts';
import { devices, nowMs, SIMBRIDGE_TOPIC, UPSTREAM_TOPIC } from '../lib/devices.ts';
import { LoadPool, type MergedRun } from '../lib/load.ts';
import { newTag, warmUp } from '../lib/measure.ts';
import { defaultBridgeSettings, mosquittoVersion } from '../lib/mosquitto.ts';
import type { Goal, ScenarioResult } from '../lib/report.ts';
import { gatewaySource, Stack } from '../lib/stack.ts';
import { putSummary, round, sleep } from '../lib/stats.ts';

const PAYLOAD_BYTES = 200;
const GOALS: Goal[] = [
  { text: 'no acknowledged message lost when simbridge is SIGKILLed', figure: 'simbridge_lost_on_kill', op: '==', target: 0 },
  { text: 'no acknowledged message lost in an upstream outage', figure: 'simbridge_lost_on_outage', op: '==', target: 0 },
];

interface Drill {
  acked: number;
  lost: number;
  duplicates: number;
  sent: number;
  /** ms from the upstream's restart until the last acknowledged message arrived (outage only). */
  drainMs?: number | null;
  /** Kill drills: ms from the kill until devices are acknowledged at half the pre-kill rate again (1 s average). */
  recoveryMs?: number | null;
  /** Kill drills: ms the restarted gateway took to be ready (listening). */
  restartMs?: number;
}

/** From the ack timeline (100 ms buckets): first time after `killAt` that a 1 s window reaches half the rate before it. */
function recovery(run: MergedRun, killAt: number): number | null {
  const t = run.ackTimeline;
  const k = Math.floor((killAt - run.startedAt) / 100);
  const pre = t.slice(Math.max(0, k - 20), k).reduce((a, b) => a + b, 0) / Math.min(20, Math.max(1, k));
  for (let i = k + 1; i + 10 <= t.length; i++) {
    const avg = t.slice(i, i + 10).reduce((a, b) => a + b, 0) / 10;
    if (avg >= pre / 2) return (i - k) * 100;
  }
  return null;
}

/** Waits (bounded) until every acknowledged message has arrived upstream, then compares. */
async function settle(collector: Collector, stats: TagStats, run: MergedRun, timeoutMs: number, quietMs: number): Promise<Drill> {
  const acked = run.acked_by_device ?? new Map();
  let cmp = stats.compare(acked);
  const deadline = Date.now() + timeoutMs;
  let lastSeen = collector.received;
  let lastChange = Date.now();
  while (cmp.lost > 0 && Date.now() < deadline) {
    await sleep(500);
    if (collector.received !== lastSeen) {
      lastSeen = collector.received;
      lastChange = Date.now();
    } else if (Date.now() - lastChange > quietMs) break;
    cmp = stats.compare(acked);
  }
  return { acked: cmp.acked, lost: cmp.lost, duplicates: stats.duplicates, sent: run.sent };
}

/**
 * Scenario 4: fault drills at full load, simbridge side by side with the Mosquitto bridge.
 *  - SIGKILL the gateway (simbridge; then the bridge Mosquitto) mid-run and start it again: devices
 *    (mqtt.js, reconnectPeriod) reconnect; a message counts as acknowledged only when its PUBACK came.
 *  - Stop the upstream Mosquitto for BENCH_OUTAGE_S with both loads running, start it again, stop the
 *    load, and time the drain of simbridge's backlog.
 */
export async function faults(ctx: Ctx): Promise<ScenarioResult> {
  const n = knob('DEVICES', 100, 100, ctx);
  const repeats = knob('REPEATS', 3, 1, ctx);
  const beforeKillMs = knob('BEFORE_KILL_S', 5, 4, ctx) * 1000;
  const afterRestartMs = knob('AFTER_RESTART_S', 5, 5, ctx) * 1000;
  const outageS = knob('OUTAGE_S', 60, 8, ctx);
  const preOutageMs = knob('PRE_OUTAGE_S', 5, 3, ctx) * 1000;
  const restartDelayMs = knob('RESTART_DELAY_MS', 1000, 1000, ctx);
  const drainTimeoutMs = knob('DRAIN_TIMEOUT_S', 240, 90, ctx) * 1000;
  const window = knob('WINDOW', 4, 4, ctx);
  const reconnectPeriodMs = 250;

  const simKills: Drill[] = [];
  const bridgeKills: Drill[] = [];
  let simOutage: Drill | undefined;
  let bridgeOutage: Drill | undefined;
  const stack = await Stack.start();
  try {
    const gw = await stack.startGateway();
    const bridge = await stack.startBridge(defaultBridgeSettings);
    const simLoad = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: gw.mqttPort }, devices(n, 1, SIMBRIDGE_TOPIC), { workers: 2, reconnectPeriodMs });
    const bridgeLoad = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: bridge.port }, devices(n, 2, UPSTREAM_TOPIC, n), { workers: 2, reconnectPeriodMs });
    try {
      await warmUp(stack.collector, simLoad, n);
      await warmUp(stack.collector, bridgeLoad, n);

      // --- SIGKILL drills -------------------------------------------------------------------------
      const killDrill = async (label: string, load: LoadPool, kill: () => Promise<void>, restart: () => Promise<void>): Promise<Drill> => {
        const tag = newTag(label[0]);
        const stats = stack.collector.stats(tag);
        // Bounded by time (the cap) but normally stopped `afterRestartMs` after the restart, however long that took.
        const running = load.run({ tag, mode: 'closed', window, durationMs: beforeKillMs + 120_000, perDeviceMax: 10_000_000, tailMs: 5_000, payloadBytes: PAYLOAD_BYTES, returnAcked: true });
        await sleep(beforeKillMs);
        const before = await load.progress();
        const killAt = nowMs();
        await kill();
        await sleep(restartDelayMs);
        const restartStarted = Date.now();
        await restart();
        const restartMs = Date.now() - restartStarted;
        await sleep(afterRestartMs);
        await load.stop();
        const run = await running;
        const d = await settle(stack.collector, stats, run, 120_000, 20_000);
        d.recoveryMs = recovery(run, killAt);
        d.restartMs = restartMs;
        ctx.log(
          `  ${label} SIGKILL after ${before.acked} acks: ${d.acked} acknowledged, ${d.lost} lost, ${d.duplicates} duplicates upstream; restart took ${restartMs / 1000} s, acks back to half rate ${d.recoveryMs === null ? '(never)' : d.recoveryMs / 1000 + ' s'} after the kill (${run.errors} device errors)`,
        );
        return d;
      };
      for (let i = 0; i < repeats; i++) {
        simKills.push(
          await killDrill('simbridge', simLoad, async () => void (await stack.stopGateway('SIGKILL')), async () => void (await stack.startGateway())),
        );
      }
      for (let i = 0; i < repeats; i++) {
        bridgeKills.push(await killDrill('bridge', bridgeLoad, () => bridge.broker.stop('SIGKILL'), () => bridge.broker.start()));
      }

      // --- upstream outage, both side by side ------------------------------------------------------
      const simTag = newTag('o');
      const bridgeTag = newTag('q');
      const total = preOutageMs + outageS * 1000 + 60_000;
      const args = { mode: 'closed' as const, window, durationMs: total, perDeviceMax: 10_000_000, tailMs: 30_000, payloadBytes: PAYLOAD_BYTES, returnAcked: true };
      const simRun = simLoad.run({ tag: simTag, ...args });
      const bridgeRun = bridgeLoad.run({ tag: bridgeTag, ...args });
      await sleep(preOutageMs);
      ctx.log(`  upstream outage: stopping the upstream Mosquitto for ${outageS} s at full load`);
      await stack.upstream.broker.stop('SIGTERM');
      await sleep(outageS * 1000);
      const during = await simLoad.progress();
      await stack.upstream.broker.start();
      const restartAt = nowMs();
      await Promise.all([simLoad.stop(), bridgeLoad.stop()]);
      const [sr, br] = await Promise.all([simRun, bridgeRun]);
      ctx.log(`  upstream back; simbridge acknowledged ${sr.acked} (${during.acked} by the end of the outage), bridge ${br.acked}; draining`);
      const simStats = stack.collector.stats(simTag);
      simOutage = await settle(stack.collector, simStats, sr, drainTimeoutMs, 45_000);
      simOutage.drainMs = simOutage.lost === 0 ? simStats.lastAt - restartAt : null;
      bridgeOutage = await settle(stack.collector, stack.collector.stats(bridgeTag), br, 30_000, 15_000);
      ctx.log(
        `  outage: simbridge ${simOutage.lost} lost of ${simOutage.acked}, drained in ${simOutage.drainMs === null ? '(not drained)' : round(simOutage.drainMs / 1000) + ' s'}; bridge ${bridgeOutage.lost} lost of ${bridgeOutage.acked}`,
      );
    } finally {
      await simLoad.close();
      await bridgeLoad.close();
    }
  } finally {
    await stack.close();
  }

  const figures: Record<string, number | null> = {};
  putSummary(figures, 'simbridge_lost_on_kill', simKills.map((d) => d.lost));
  putSummary(figures, 'bridge_lost_on_kill', bridgeKills.map((d) => d.lost));
  putSummary(figures, 'simbridge_duplicates_on_kill', simKills.map((d) => d.duplicates));
  putSummary(figures, 'bridge_duplicates_on_kill', bridgeKills.map((d) => d.duplicates));
  putSummary(figures, 'simbridge_recovery_s', simKills.map((d) => (d.recoveryMs == null ? null : d.recoveryMs / 1000)));
  putSummary(figures, 'bridge_recovery_s', bridgeKills.map((d) => (d.recoveryMs == null ? null : d.recoveryMs / 1000)));
  putSummary(figures, 'simbridge_restart_s', simKills.map((d) => (d.restartMs === undefined ? null : d.restartMs / 1000)));
  putSummary(figures, 'bridge_restart_s', bridgeKills.map((d) => (d.restartMs === undefined ? null : d.restartMs / 1000)));
  putSummary(figures, 'simbridge_acked_per_kill_run', simKills.map((d) => d.acked));
  putSummary(figures, 'bridge_acked_per_kill_run', bridgeKills.map((d) => d.acked));
  figures.simbridge_lost_on_kill_total = simKills.reduce((a, d) => a + d.lost, 0);
  figures.bridge_lost_on_kill_total = bridgeKills.reduce((a, d) => a + d.lost, 0);
  figures.simbridge_lost_on_outage = simOutage?.lost ?? null;
  figures.bridge_lost_on_outage = bridgeOutage?.lost ?? null;
  figures.simbridge_drain_s = simOutage?.drainMs === undefined || simOutage.drainMs === null ? null : round(simOutage.drainMs / 1000);
  figures.simbridge_acked_during_outage_run = simOutage?.acked ?? null;
  figures.bridge_acked_during_outage_run = bridgeOutage?.acked ?? null;
  figures.simbridge_duplicates_on_outage = simOutage?.duplicates ?? null;
  figures.outage_s = outageS;

  return {
    params: {
      quick: ctx.quick,
      gateway_commit: gatewaySource().commit,
      devices_each: n,
      qos: 1,
      payload_bytes: PAYLOAD_BYTES,
      window_per_device: window,
      before_kill_s: beforeKillMs / 1000,
      after_restart_s: afterRestartMs / 1000,
      restart_delay_ms: restartDelayMs,
      device_reconnect_period_ms: reconnectPeriodMs,
      repeats,
      outage_s: outageS,
      pre_outage_s: preOutageMs / 1000,
      storage_synchronous: 'full',
      bridge: `mosquitto ${mosquittoVersion()}, persistence on, autosave every ${defaultBridgeSettings.autosaveIntervalS} s, max_queued_messages ${defaultBridgeSettings.maxQueued}, max_inflight_messages ${defaultBridgeSettings.maxInflight}, restart_timeout default (5–30 s backoff)`,
      simbridge_upstream_retry: 'defaults (retryDelayMs 1000, retryMaxDelayMs 30000) unless overridden',
      gateway_config_override: stack.gatewayOverride,
    },
    figures,
    goals: GOALS,
    notes: [
      '**lost** = acknowledged to the device (its PUBACK arrived) but never arrived at the upstream Mosquitto after a bounded wait; messages never acknowledged do not count. **duplicates** = extra copies that arrived upstream (at-least-once delivery: a device resends what was not acknowledged when the gateway died, and simbridge resends rows whose upstream PUBACK it had not recorded).',
      '`*_recovery_s`: from the SIGKILL until devices are acknowledged again at half the rate of the 2 s before it (1 s average); it includes the restart delay and the process start.',
      `Kill drills: SIGKILL ${beforeKillMs / 1000} s into a closed-loop run (${window} in flight per device), start again after ${restartDelayMs} ms on the same ports and data (\`*_restart_s\`: until it listens again), load goes on ${afterRestartMs / 1000} s after that; devices reconnect every ${reconnectPeriodMs} ms. simbridge first, then the bridge Mosquitto, ${repeats} time(s) each; figures are medians per drill, \`*_total\` sums over drills.`,
      `Outage: both loads run side by side; ${preOutageMs / 1000} s in, the upstream Mosquitto is stopped (SIGTERM) for ${outageS} s and started again, and the loads stop at that moment. \`simbridge_drain_s\` runs from the upstream restart until the last message simbridge acknowledged arrived (it includes simbridge's upstream reconnect backoff).`,
      'The upstream Mosquitto keeps the collector\'s persistent session across its restart (persistence on, saved at SIGTERM), so what it had accepted before stopping still reaches the collector: losses are the gateways\'.',
      'The bridge Mosquitto acknowledges from memory: on SIGKILL it loses what arrived since its last autosave; in an outage its queue (max_queued_messages) overflows and drops.',
    ],
    extraMd: [
      '## Drills',
      '',
      '| drill | acknowledged | lost | duplicates upstream | sent | recovery s |',
      '|---|---:|---:|---:|---:|---:|',
      ...simKills.map((d, i) => `| simbridge SIGKILL ${i + 1} | ${d.acked} | ${d.lost} | ${d.duplicates} | ${d.sent} | ${d.recoveryMs == null ? '' : d.recoveryMs / 1000} |`),
      ...bridgeKills.map((d, i) => `| bridge SIGKILL ${i + 1} | ${d.acked} | ${d.lost} | ${d.duplicates} | ${d.sent} | ${d.recoveryMs == null ? '' : d.recoveryMs / 1000} |`),
      ...(simOutage ? [`| simbridge upstream outage ${outageS} s | ${simOutage.acked} | ${simOutage.lost} | ${simOutage.duplicates} | ${simOutage.sent} | |`] : []),
      ...(bridgeOutage ? [`| bridge upstream outage ${outageS} s | ${bridgeOutage.acked} | ${bridgeOutage.lost} | ${bridgeOutage.duplicates} | ${bridgeOutage.sent} | |`] : []),
      '',
    ].join('\n'),
  };
}

export const scenario: Scenario = { title: 'fault drills at full load: SIGKILL and upstream outage, beside a Mosquitto bridge', goals: GOALS, run: faults };
