// Growth benchmark (issue 19): how simbridge's cost grows with the fleet.
//  - Fleets of 100, 1,000 and 10,000 MQTT devices (QoS 1, one upstream session each): saturated msgs/s,
//    CPU per message, RSS, and ack p99 at half the saturated rate, each fleet on a fresh stack.
//  - RSS with 1,000, 5,000 and 10,000 warm upstream sessions, opened in steps on one gateway (the way the
//    sessions scenario measures them, with its helpers).
// Knobs: BENCH_FLEETS (100,1000,10000), BENCH_SESSION_STEPS (1000,5000,10000), BENCH_WINDOW (4),
// BENCH_DURATION_S (8), BENCH_PACED_S (6), BENCH_REPEATS (1).
//
// Every device binds its own source address (127.x.y.z, bench/lib/devices.ts). A device costs simbridge
// two file descriptors (its socket and its upstream TLS session): a fleet the open-files limit cannot
// hold is measured at the largest size it can, and the report says so.
import { knob, knobList, type Ctx, type Scenario } from '../lib/context.ts';
import { devices, SIMBRIDGE_TOPIC } from '../lib/devices.ts';
import { forkWorker, LoadPool, type Worker } from '../lib/load.ts';
import { measuredRun, newTag, warmUp, type RunFigures } from '../lib/measure.ts';
import { settledRss } from '../lib/memory.ts';
import { mosquittoVersion } from '../lib/mosquitto.ts';
import { openFilesLimit } from '../lib/procstat.ts';
import { scrape, sum } from '../lib/prom.ts';
import type { ScenarioResult } from '../lib/report.ts';
import { gatewaySource, Stack } from '../lib/stack.ts';
import { round, summary } from '../lib/stats.ts';
import { connectIdle, publishAll, registerSims } from './sessions.ts';
import { runTable } from './throughput.ts';

const PAYLOAD_BYTES = 200;
const WORKERS = 2;
/** Paced runs: most unacknowledged messages per device (as throughput). */
const PACED_CAP = 100;
/** simbridge's descriptors per device (device socket + upstream session) and what it holds besides (database, listeners, threads). */
const FDS_PER_DEVICE = 2;
const FDS_RESERVED = 200;
/** Longest wait for vending and opening sessions: 100 ms per device (a quiet 2-core machine needs about 10), at least 5 minutes. */
const warmTimeoutMs = (devices: number) => Math.max(300_000, devices * 100);
/** Per-unit cost counts as still linear in the fleet while it grows by less than this factor from one size to the next. */
const LINEAR_TOLERANCE = 1.2;

/**
 * Gateway limits for large fleets (bench settings, not defaults): every device keeps its session, vending and
 * upstream connects at what the sandbox and IoT Core allow (connects are not what is measured).
 */
function growthOverride(maxDevices: number) {
  return {
    upstream: { maxSessions: maxDevices + 100, idleTimeoutMs: 1_800_000, connectsPerSecond: 500 },
    vending: { quotas: { CreateCertificateFromCsr: 250, AttachPolicy: 250, CreateThing: 250, AttachThingPrincipal: 250 } },
  };
}

/** What fits under the open-files limit this process (and so every process it starts) has. */
function fleetThatFits(n: number, limit: number | null): number {
  return limit === null ? n : Math.min(n, Math.floor((limit - FDS_RESERVED) / FDS_PER_DEVICE));
}

interface FleetFigures {
  nominal: number;
  devices: number;
  sat: RunFigures;
  paced: RunFigures;
  rssSettledKb: number | null;
  sessions: number;
  connectS: number;
  warmS: number;
}

async function fleet(ctx: Ctx, nominal: number, n: number, o: { window: number; satMs: number; pacedMs: number; repeats: number }): Promise<FleetFigures> {
  const log = (msg: string) => ctx.log(`  [${n} devices] ${msg}`);
  const stack = await Stack.start({ gatewayOverride: growthOverride(n) });
  try {
    const specs = devices(n, 1, SIMBRIDGE_TOPIC);
    registerSims(stack, specs);
    const gw = await stack.startGateway();
    const t0 = Date.now();
    const load = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: gw.mqttPort }, specs, { workers: WORKERS, concurrency: 50, timeoutMs: 300_000 });
    try {
      const connectS = (Date.now() - t0) / 1000;
      const t1 = Date.now();
      await warmUp(stack.collector, load, n, warmTimeoutMs(n));
      const warmS = (Date.now() - t1) / 1000;
      const sessions = gw.adminPort ? sum(await scrape(gw.adminPort), 'simbridge_upstream_sessions') : 0;
      const rssSettledKb = await settledRss(gw.pid);
      log(`connected in ${connectS.toFixed(1)} s, warm (vended, ${sessions} upstream sessions) in ${warmS.toFixed(1)} s, RSS ${round((rssSettledKb ?? 0) / 1024)} MB`);
      const sats: RunFigures[] = [];
      for (let i = 0; i < o.repeats; i++) {
        const f = await measuredRun(stack.collector, load, { tag: newTag('g'), mode: 'closed', window: o.window, durationMs: o.satMs, payloadBytes: PAYLOAD_BYTES, pid: gw.pid, drainTimeoutMs: 300_000 });
        sats.push(f);
        log(`saturated: ${round(f.msgs_per_s)} msgs/s, ${round(f.cpu_us_per_msg)} µs CPU/msg, ack p99 ${f.ack_p99_ms} ms, peak RSS ${round((f.rss_peak_kb ?? 0) / 1024)} MB`);
      }
      const sat = sats.sort((a, b) => a.msgs_per_s - b.msgs_per_s)[sats.length >> 1];
      const half = Math.max(1, Math.round(sat.msgs_per_s / 2));
      const paced = await measuredRun(stack.collector, load, { tag: newTag('p'), mode: 'paced', window: PACED_CAP, ratePerS: half, durationMs: o.pacedMs, payloadBytes: PAYLOAD_BYTES, pid: gw.pid, drainTimeoutMs: 300_000 });
      log(`paced at ${half}/s: ack p50/p99 ${paced.ack_p50_ms}/${paced.ack_p99_ms} ms, ${round(paced.cpu_us_per_msg)} µs CPU/msg`);
      return { nominal, devices: n, sat, paced, rssSettledKb, sessions, connectS, warmS };
    } finally {
      await load.close();
    }
  } finally {
    await stack.close();
  }
}

/** RSS with warm upstream sessions, opened in steps on one gateway whose devices all connected idle first. */
async function warmSessions(ctx: Ctx, steps: Array<{ nominal: number; n: number }>) {
  const log = (msg: string) => ctx.log(`  [sessions] ${msg}`);
  const max = Math.max(...steps.map((s) => s.n));
  const stack = await Stack.start({ gatewayOverride: growthOverride(max) });
  const workers: Worker[] = [];
  try {
    const specs = devices(max, 1, SIMBRIDGE_TOPIC);
    registerSims(stack, specs);
    const gw = await stack.startGateway();
    if (!gw.adminPort) throw new Error('simbridge serves no admin API (its ready signal has no admin port)');
    for (let k = 0; k < WORKERS; k++) workers.push(forkWorker('worker'));
    const conn = await connectIdle(workers, gw.mqttPort, specs);
    if (conn.connected < max) throw new Error(`only ${conn.connected} of ${max} devices connected: ${JSON.stringify(conn.errorKinds)}`);
    const idleKb = (await settledRss(gw.pid))!;
    log(`${max} idle devices connected in ${conn.seconds.toFixed(1)} s, RSS ${round(idleKb / 1024)} MB`);
    const tag = newTag('s');
    const stats = stack.collector.stats(tag);
    const out: Array<{ nominal: number; n: number; sessions: number; rssKb: number; acked: number; ackP99: number | null }> = [];
    let from = 0;
    let acked = 0;
    for (const step of [...steps].sort((a, b) => a.n - b.n)) {
      const r = await publishAll(workers, tag, from, step.n, 0, warmTimeoutMs(step.n - from));
      acked += r.acked;
      await stack.collector.waitUntil(() => stats.unique >= acked, { timeoutMs: warmTimeoutMs(step.n - from), quietMs: 30_000 });
      const sessions = sum(await scrape(gw.adminPort), 'simbridge_upstream_sessions');
      const rssKb = (await settledRss(gw.pid))!;
      out.push({ ...step, sessions, rssKb, acked: r.acked, ackP99: r.ackP99 });
      log(`${sessions} warm sessions (${r.acked}/${step.n - from} of this step acknowledged, ack p99 ${r.ackP99} ms): RSS ${round(rssKb / 1024)} MB`);
      from = step.n;
    }
    return { idleKb, devices: max, steps: out };
  } finally {
    await Promise.all(workers.map((w) => w.call({ cmd: 'close' }, 10_000).catch(() => undefined)));
    await stack.close();
  }
}

const ratio = (a: number | null | undefined, b: number | null | undefined) => (a != null && b != null && b !== 0 ? round(a / b) : null);

async function growth(ctx: Ctx): Promise<ScenarioResult> {
  const started = Date.now();
  const fleets = knobList('FLEETS', [100, 1000, 10_000], [50, 200, 500], ctx);
  const sessionSteps = knobList('SESSION_STEPS', [1000, 5000, 10_000], [100, 250, 500], ctx);
  const o = { window: knob('WINDOW', 4, 4, ctx), satMs: knob('DURATION_S', 8, 4, ctx) * 1000, pacedMs: knob('PACED_S', 6, 3, ctx) * 1000, repeats: knob('REPEATS', 1, 1, ctx) };
  const fdLimit = openFilesLimit();
  const notes = new Set<string>();
  const clamp = (nominal: number) => {
    const n = fleetThatFits(nominal, fdLimit);
    if (n < nominal) notes.add(`${nominal.toLocaleString('en')} devices need about ${(nominal * FDS_PER_DEVICE + FDS_RESERVED).toLocaleString('en')} open files in simbridge (a device socket and an upstream TLS session each); this machine allows ${fdLimit} per process and the limit cannot be raised here, so the figures named \`_${nominal}\` were measured with ${n.toLocaleString('en')} (\`devices_measured_${nominal}\`).`);
    return n;
  };
  const figures: Record<string, number | null> = {};
  const perFleet: FleetFigures[] = [];
  for (const nominal of fleets) {
    const n = clamp(nominal);
    ctx.log(`fleet of ${n} devices`);
    const f = await fleet(ctx, nominal, n, o);
    perFleet.push(f);
    figures[`devices_measured_${nominal}`] = n;
    figures[`msgs_per_s_${nominal}`] = round(f.sat.msgs_per_s);
    figures[`cpu_us_per_msg_${nominal}`] = round(f.sat.cpu_us_per_msg);
    figures[`rss_mb_${nominal}`] = f.rssSettledKb === null ? null : round(f.rssSettledKb / 1024);
    figures[`rss_peak_mb_${nominal}`] = f.sat.rss_peak_kb === null ? null : round(f.sat.rss_peak_kb / 1024);
    figures[`ack_p99_ms_${nominal}`] = f.paced.ack_p99_ms;
    figures[`ack_p99_ms_saturated_${nominal}`] = f.sat.ack_p99_ms;
    figures[`undelivered_${nominal}`] = f.sat.undelivered + f.paced.undelivered;
  }
  // Per-unit cost from one fleet size to the next: 1 = total cost grows linearly with the fleet.
  const growthRows: string[] = [];
  for (let i = 1; i < perFleet.length; i++) {
    const a = perFleet[i - 1];
    const b = perFleet[i];
    const key = `${a.nominal}_to_${b.nominal}`;
    figures[`cpu_us_per_msg_growth_${key}`] = ratio(b.sat.cpu_us_per_msg, a.sat.cpu_us_per_msg);
    figures[`msgs_per_s_growth_${key}`] = ratio(b.sat.msgs_per_s, a.sat.msgs_per_s);
    figures[`ack_p99_growth_${key}`] = ratio(b.paced.ack_p99_ms, a.paced.ack_p99_ms);
    // Memory of the devices added from A to B, each (the idle gateway left out).
    figures[`rss_kb_per_added_device_${key}`] = a.rssSettledKb === null || b.rssSettledKb === null || b.devices === a.devices ? null : round((b.rssSettledKb - a.rssSettledKb) / (b.devices - a.devices));
    if (i > 1) {
      const prevKey = `${perFleet[i - 2].nominal}_to_${a.nominal}`;
      figures[`rss_kb_per_added_device_growth_${prevKey}_vs_${key}`] = ratio(figures[`rss_kb_per_added_device_${key}`], figures[`rss_kb_per_added_device_${prevKey}`]);
    }
    const cpu = figures[`cpu_us_per_msg_growth_${key}`];
    growthRows.push(`| ${a.devices} → ${b.devices} | ${cpu ?? ''} | ${figures[`msgs_per_s_growth_${key}`] ?? ''} | ${figures[`ack_p99_growth_${key}`] ?? ''} | ${figures[`rss_kb_per_added_device_${key}`] ?? ''} | ${cpu === null ? 'n/a' : cpu < LINEAR_TOLERANCE ? 'linear' : '**superlinear**'} |`);
  }
  const firstSuperlinear = perFleet.findIndex((_, i) => i > 0 && (figures[`cpu_us_per_msg_growth_${perFleet[i - 1].nominal}_to_${perFleet[i].nominal}`] ?? 0) >= LINEAR_TOLERANCE);
  figures.cpu_linear_up_to_devices = perFleet.length === 0 ? null : firstSuperlinear === -1 ? perFleet.at(-1)!.devices : perFleet[firstSuperlinear - 1].devices;

  const steps = sessionSteps.map((nominal) => ({ nominal, n: clamp(nominal) }));
  ctx.log(`warm sessions: ${steps.map((s) => s.n).join(', ')}`);
  const warm = steps.length ? await warmSessions(ctx, steps) : null;
  const sessionRows: string[] = [];
  if (warm) {
    figures.rss_mb_sessions_idle_devices = round(warm.idleKb / 1024);
    let prev: { sessions: number; rssKb: number } = { sessions: 0, rssKb: warm.idleKb };
    for (const s of warm.steps) {
      figures[`sessions_open_${s.nominal}`] = s.sessions;
      figures[`rss_mb_sessions_${s.nominal}`] = round(s.rssKb / 1024);
      figures[`rss_kb_per_warm_session_${s.nominal}`] = s.sessions ? round((s.rssKb - warm.idleKb) / s.sessions) : null;
      const added = s.sessions - prev.sessions;
      const marginal = added > 0 ? round((s.rssKb - prev.rssKb) / added) : null;
      figures[`rss_kb_per_additional_session_${s.nominal}`] = marginal;
      figures[`warm_ack_p99_ms_${s.nominal}`] = s.ackP99;
      sessionRows.push(`| ${s.n} | ${s.sessions} | ${round(s.rssKb / 1024)} | ${figures[`rss_kb_per_warm_session_${s.nominal}`] ?? ''} | ${marginal ?? ''} | ${s.ackP99 ?? ''} |`);
      prev = s;
    }
    for (let i = 1; i < warm.steps.length; i++) {
      const a = warm.steps[i - 1];
      const b = warm.steps[i];
      figures[`rss_per_warm_session_growth_${a.nominal}_to_${b.nominal}`] = ratio(figures[`rss_kb_per_warm_session_${b.nominal}`], figures[`rss_kb_per_warm_session_${a.nominal}`]);
    }
  }

  const cpuAll = summary(perFleet.map((f) => f.sat.cpu_us_per_msg));
  const extraMd = [
    '## Per fleet size',
    '',
    '| devices | upstream sessions | connect s | warm-up s | msgs/s | CPU µs/msg | RSS MB (warm, idle) | peak RSS MB | ack p99 ms at half rate | ack p99 ms saturated |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...perFleet.map(
      (f) =>
        `| ${f.devices} | ${f.sessions} | ${round(f.connectS)} | ${round(f.warmS)} | ${round(f.sat.msgs_per_s)} | ${round(f.sat.cpu_us_per_msg)} | ${f.rssSettledKb === null ? '' : round(f.rssSettledKb / 1024)} | ${f.sat.rss_peak_kb === null ? '' : round(f.sat.rss_peak_kb / 1024)} | ${f.paced.ack_p99_ms ?? ''} | ${f.sat.ack_p99_ms ?? ''} |`,
    ),
    '',
    '## Growth from one size to the next (per-unit cost, later ÷ earlier; 1 = linear total cost)',
    '',
    '| devices | CPU µs/msg | msgs/s | ack p99 (half rate) | RSS KB per added device | CPU per message |',
    '|---|---:|---:|---:|---:|---|',
    ...growthRows,
    '',
    ...(warm
      ? [
          `## Warm upstream sessions (one gateway, ${warm.devices} idle devices connected first: RSS ${round(warm.idleKb / 1024)} MB)`,
          '',
          '| warm sessions wanted | open | RSS MB | KB per warm session | KB per additional session | ack p99 ms (first message) |',
          '|---:|---:|---:|---:|---:|---:|',
          ...sessionRows,
          '',
        ]
      : []),
    runTable(perFleet.flatMap((f) => [[`${f.devices} saturated`, f.sat] as const, [`${f.devices} paced`, f.paced] as const])),
  ].join('\n');

  return {
    params: {
      quick: ctx.quick,
      gateway_commit: gatewaySource().commit,
      fleets,
      session_steps: sessionSteps,
      open_files_limit: fdLimit,
      qos: 1,
      payload_bytes: PAYLOAD_BYTES,
      window_per_device: o.window,
      saturated_run_s: o.satMs / 1000,
      paced_run_s: o.pacedMs / 1000,
      repeats: o.repeats,
      load_processes: WORKERS,
      upstream: `mosquitto ${mosquittoVersion()}, mutual TLS (sandbox CA), one session per device`,
      storage_synchronous: 'full',
      gateway_settings: growthOverride(Math.max(...fleets, ...sessionSteps)),
      gateway_config_override: process.env.BENCH_GATEWAY_CONFIG ?? 'none',
      total_runtime_s: Math.round((Date.now() - started) / 1000),
    },
    figures,
    intro: [
      `How simbridge's cost grows with the fleet: ${perFleet.map((f) => f.devices).join(', ')} MQTT devices (QoS 1, ${PAYLOAD_BYTES}-byte payloads, synchronous: full), each`,
      'vended and holding its own upstream session to a real Mosquitto (mutual TLS), each fleet on a fresh stack; then one gateway with',
      `${steps.map((s) => s.n).join(' / ')} warm upstream sessions for memory. CPU per message ranged ${round(cpuAll.min)}–${round(cpuAll.max)} µs.`,
    ],
    notes: [
      `\`msgs_per_s_N\`, \`cpu_us_per_msg_N\`: a closed loop, every device keeping ${o.window} messages unacknowledged (the same per-device window at every size), ${o.satMs / 1000} s; messages delivered upstream per second and simbridge's CPU (all threads) per delivered message, drain included. With 100 devices IoT Core's 100 publishes/s per session (which simbridge enforces) caps delivery at 10,000 msgs/s whatever the gateway does.`,
      `\`ack_p99_ms_N\`: PUBACK latency seen by the devices in an open-loop run at half that fleet's saturated rate (${o.pacedMs / 1000} s, at most ${PACED_CAP} unacknowledged per device); \`ack_p99_ms_saturated_N\` is the closed loop's, where queueing behind ${o.window} × N outstanding messages dominates.`,
      '`rss_mb_N`: simbridge VmRSS once settled (two samples 1 s apart within 1 %) after the warm-up (every device connected, vended, its session open), before the measured runs; `rss_peak_mb_N`: the peak during the saturated run. `rss_kb_per_added_device_A_to_B` = (rss_mb_B − rss_mb_A) / (B − A): what each device added costs, the idle gateway left out (different gateways, so it carries each one\'s heap noise); `rss_kb_per_added_device_growth_…_vs_…` compares two such intervals (1 = memory linear in the fleet).',
      `\`*_growth_A_to_B\` = the per-unit figure at B ÷ the same at A (\`msgs_per_s_growth\`: 1 = no more throughput from more devices). A CPU-per-message growth under ${LINEAR_TOLERANCE} counts as linear total cost; \`cpu_linear_up_to_devices\` is the largest measured fleet up to which it stayed so.`,
      '`rss_mb_sessions_S`: one gateway, all devices of the largest step connected idle first (SIMs pre-registered, IMEI bound, as in `sessions`), then one QoS 1 message from each device of the next step (vending + its upstream session), settled RSS after each step. `rss_kb_per_warm_session_S` = (RSS − RSS with the idle devices) / sessions open (`simbridge_upstream_sessions`), as `sessions` reports `rss_per_warm_session_kb`; `rss_kb_per_additional_session_S`: what the sessions of that step added, each.',
      `Bench settings (not defaults): upstream.maxSessions fleet + 100, upstream.idleTimeoutMs 1800000 (every session stays open), upstream.connectsPerSecond 500 (IoT Core's account limit; connects are not measured), vending quotas raised to 250/s (the sandbox does not throttle here).`,
      `Open files: simbridge holds two descriptors per device; this process's limit was ${fdLimit ?? 'unlimited'} (children inherit it; \`ulimit -n\` cannot exceed the hard limit without CAP_SYS_RESOURCE).`,
      ...notes,
    ],
    extraMd,
  };
}

export const scenario: Scenario = { title: 'how throughput, CPU per message, memory and ack latency grow with the fleet', run: growth };
