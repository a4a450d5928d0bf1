// Sleepy-devices benchmark (issue 6): 5,000 battery-powered devices over HTTP wake again and again,
// each time sending a few 200-byte JSON readings (POST /topics/meter?qos=1, each waiting for its 202)
// and leaving, 2,000 requests/s in all, with the `window` batching policy; then the same devices wake
// once more after the group was switched to `immediate` by a config reload. Upstream is a real
// Mosquitto (mutual TLS). Measures the IoT Core billing units each policy costs per reading,
// device-visible ack latency (storage.synchronous: full) and the upstream sessions opened.
// Knobs: BENCH_DEVICES (5,000), BENCH_READINGS (3), BENCH_WAKES (23), BENCH_RATE (2,000),
// BENCH_MAX_DELAY_MS (120,000); BENCH_CPU_PROF_DIR=DIR runs simbridge under node --cpu-prof (diagnostic).
//
// Processes (all loopback): sandbox, upstream Mosquitto, collector, simbridge (bench/lib/stack.ts) and
// 2 load generators (bench/load/http-sleepy.ts), each with 8 keep-alive agents on their own source
// addresses. Results: bench/results/sleepy.{json,md}.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { spawnCli, TEST_MASTER_KEY, track } from '../../test/helpers/processes.ts';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import { MOSQUITTO_SUB } from '../lib/mosquitto.ts';
import { devices, type DeviceSpec } from '../lib/devices.ts';
import { merge, newHist, quantile } from '../lib/hist.ts';
import { forkWorker, type Worker } from '../lib/load.ts';
import { newTag } from '../lib/measure.ts';
import { mosquittoVersion } from '../lib/mosquitto.ts';
import { scrape, sum, type Sample } from '../lib/prom.ts';
import { cpuShareMeter, type CpuShares } from '../lib/procstat.ts';
import type { Goal, ScenarioResult } from '../lib/report.ts';
import { gatewaySource, simbridgeSpawn, Stack, writeGatewayConfig } from '../lib/stack.ts';
import { round, sleep } from '../lib/stats.ts';
import type { SleepyRunResult } from '../load/http-sleepy.ts';
import { openDatabase } from '../../storage/db.ts';
import { SimStore } from '../../storage/sims.ts';

const PAYLOAD_BYTES = 200;
/** The start of a phase left out of `ack_p99_ms_after_warmup` (the goal figure keeps it). */
const WARMUP_MS = 10_000;
const WORKERS = 2;
const SOURCES_PER_WORKER = 8;
const MAX_SOCKETS_PER_SOURCE = 64;
const TOPIC = 'meter';
const VEND_QUOTAS = { CreateCertificateFromCsr: 500, AttachPolicy: 500, CreateThing: 500, AttachThingPrincipal: 500 };

const goals = (rate: number): Goal[] => [
  { text: 'billed units: immediate / window ≥ 20× for the same readings', figure: 'billed_units_reduction', op: '>=', target: 20 },
  { text: `ack p99 ≤ 10 ms at ${rate} requests/s (synchronous: full)`, figure: 'ack_p99_ms', op: '<=', target: 10 },
  { text: `the gateway sustains ${rate} requests/s`, figure: 'achieved_req_per_s', op: '>=', target: rate * 0.95 },
];

/**
 * Watches the upstream's batch topics (plain listener) while it runs: readings (collector markers) and
 * bytes per batch message, for the largest batch seen. Bounded: killed by stop() or at exit.
 */
function batchWatcher(plainPort: number) {
  const child = track(spawn(MOSQUITTO_SUB, ['-h', '127.0.0.1', '-p', String(plainPort), '-q', '1', '-t', 'devices/+/batch', '-F', '%l %p'], { stdio: ['ignore', 'pipe', 'ignore'] }));
  let buf = '';
  const seen = { batches: 0, maxReadings: 0, maxBytes: 0 };
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const sp = line.indexOf(' ');
      const readings = (line.match(/~R[A-Za-z0-9]+:\d+:\d+:\d+\.\d+~/g) ?? []).length;
      seen.batches++;
      seen.maxReadings = Math.max(seen.maxReadings, readings);
      seen.maxBytes = Math.max(seen.maxBytes, Number(line.slice(0, sp)));
    }
  });
  return {
    seen,
    stop: () => child.kill('SIGTERM'),
  };
}

interface Phase {
  name: string;
  group: string;
  devices: number;
  wakes: number;
  readingsPerWake: number;
  offeredReqPerS: number;
  sent: number;
  acked: number;
  errors: number;
  errorKinds: Record<string, number>;
  achievedReqPerS: number;
  maxWakeLagMs: number;
  maxConcurrentDevices: number;
  ackP50: number | null;
  ackP99: number | null;
  /** Without the requests sent in the first WARMUP_MS of the phase. */
  ackP99AfterWarmup: number | null;
  ackMax: number | null;
  /** p99 over every request, failed ones with the time until they failed. */
  requestP99: number | null;
  /** Readings the gateway accepted in the phase (simbridge_ingress_messages_total), including those whose device had given up. */
  accepted: number;
  delivered: number;
  duplicates: number;
  deliverS: number | null;
  billedUnits: number;
  billedUnitsCollector: number;
  upstreamMessagesCollector: number;
  publishesOk: number;
  publishesFailed: number;
  readingsPerPublish: number | null;
  sessionsOpened: number;
  connectsFailed: number;
  outboxLeft: number;
  /** Where the machine's CPU went while the devices sent. */
  cpu: CpuShares;
  /** Per 10 s (by send time): acknowledgements over 10 ms / slowest ack ms. */
  slowPer10s: string;
}

async function sleepy(ctx: Ctx): Promise<ScenarioResult> {
  const DEVICES = knob('DEVICES', 5000, 500, ctx);
  const READINGS = knob('READINGS', 3, 3, ctx);
  // A device's window spans several wakes: 23 wakes × 3 readings fill three 5 KB batches per device.
  const WAKES = knob('WAKES', 23, 5, ctx);
  const RATE = knob('RATE', 2000, 500, ctx);
  const MAX_DELAY_MS = knob('MAX_DELAY_MS', 120_000, 10_000, ctx);
  const WINDOW = { policy: 'window', maxMessages: 100, maxBytes: 5120, maxDelayMs: MAX_DELAY_MS };
  /** Diagnostic run: simbridge under node --cpu-prof (the profile is written at shutdown). */
  const CPU_PROF_DIR = process.env.BENCH_CPU_PROF_DIR || undefined;
  const started = Date.now();
  const log = (msg: string) => ctx.log(`  ${msg}`);
  const notes: string[] = [];
  const groups = { default: {}, meters: { batching: WINDOW } };
  // Upstream settings are the defaults (sessions idle-close after 300 s, at most 5,000 open).
  const stack = await Stack.start({ gatewayOverride: { groups, vending: { quotas: VEND_QUOTAS } } });
  const workers: Worker[] = [];
  try {
    // ---- registry: the sleepy devices (group meters), IMEIs bound ----
    const setW = devices(DEVICES, 3, () => TOPIC);
    const dataDir = join(stack.dir, 'gateway');
    const db = openDatabase({ file: join(dataDir, 'simbridge.db'), synchronous: 'normal' });
    const sims = new SimStore(db);
    db.transaction(() => {
      for (const s of setW) sims.register({ imsi: s.imsi, group: 'meters', thingName: `sim-${s.imsi}`, boundImei: s.imei });
    })();
    db.close();

    // ---- pre-vending (devices in the field were vended long ago): `simbridge vend` ----
    const vendConfig = join(stack.dir, 'vend.yaml');
    await writeGatewayConfig(vendConfig, {
      mode: 'aws',
      dataDir,
      groups,
      identity: { allowInsecureClaims: true }, // bench devices claim their identity (a lab)
      vending: { endpoint: stack.sandbox.controlEndpoint, credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' }, quotas: VEND_QUOTAS },
      log: { level: 'warn' },
    });
    const tv = Date.now();
    const vend = spawnCli(['vend', '--config', vendConfig, '--json'], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY }, simbridgeSpawn());
    const vendCode = await Promise.race([vend.exited, sleep(420_000).then(() => (vend.child.kill('SIGKILL'), -1))]);
    const vendOut = vend.output;
    const vendSummary = vendOut.split('\n').find((l) => l.startsWith('{'));
    if (vendCode !== 0 || !vendSummary) throw new Error(`simbridge vend failed (exit ${vendCode}):\n${vendOut.slice(-3000)}`);
    const vendS = (Date.now() - tv) / 1000;
    log(`${setW.length} SIMs registered and pre-vended in ${vendS.toFixed(1)} s: ${vendSummary}`);

    const gw = await stack.startGateway(CPU_PROF_DIR ? { cpuProfDir: CPU_PROF_DIR } : {});
    await sleep(500);
    const adminPort = gw.adminPort;
    if (!adminPort) throw new Error('simbridge serves no admin API (its ready signal has no admin port)');
    log(`simbridge up (pid ${gw.pid})`);
    for (let k = 0; k < WORKERS; k++) workers.push(forkWorker('http-sleepy'));
    const sourcesOf = (k: number) => Array.from({ length: SOURCES_PER_WORKER }, (_, j) => `127.0.200.${2 + k * SOURCES_PER_WORKER + j}`);

    const phase = async (name: string, set: DeviceSpec[], group: string, wakes: number, readings: number, reqPerS: number): Promise<Phase> => {
      const tag = newTag(name.replace(/[^a-z]/g, '').slice(0, 4));
      const stats = stack.collector.stats(tag);
      const m0 = await scrape(adminPort);
      const d0 = (m: Sample[], metric: string, labels: Record<string, string>) => sum(m, metric, labels) - sum(m0, metric, labels);
      const startAt = Date.now() + 500;
      const maxDurationMs = Math.ceil(((set.length * wakes * readings) / reqPerS) * 1000) + 40_000;
      const cpuMeter = cpuShareMeter(gw.pid);
      const rs = await Promise.all(
        workers.map((w, k) =>
          w.call<SleepyRunResult>(
            {
              cmd: 'run',
              target: { host: '127.0.0.1', port: gw.httpPort },
              devices: set.filter((_, i) => i % WORKERS === k),
              readings,
              wakes,
              wakeRatePerS: reqPerS / readings / WORKERS,
              sources: sourcesOf(k),
              maxSocketsPerSource: MAX_SOCKETS_PER_SOURCE,
              payloadBytes: PAYLOAD_BYTES,
              tag,
              topic: TOPIC,
              maxDurationMs,
              startAt,
              warmupMs: WARMUP_MS,
            },
            maxDurationMs + 60_000,
          ),
        ),
      );
      const cpu = cpuMeter.stop();
      const hist = newHist();
      rs.forEach((r) => merge(hist, r.ackHist));
      const warm = newHist();
      rs.forEach((r) => merge(warm, r.ackHistAfterWarmup));
      const all = newHist();
      rs.forEach((r) => (merge(all, r.ackHist), merge(all, r.failHist)));
      const errorKinds: Record<string, number> = {};
      for (const r of rs) for (const [k, v] of Object.entries(r.errorKinds)) errorKinds[k] = (errorKinds[k] ?? 0) + v;
      const acked = rs.reduce((a, r) => a + r.acked, 0);
      const t0 = Math.min(...rs.map((r) => r.startedAt));
      const lastAck = Math.max(...rs.map((r) => r.lastAckAt));
      const mAcked = await scrape(adminPort);
      // Longest stretch without an acknowledgement (100 ms buckets, processes started together).
      const timeline = Array.from(rs[0]!.ackTimeline, (_, b) => rs.reduce((a, r) => a + (r.ackTimeline[b] ?? 0), 0));
      let lastBucket = timeline.length - 1;
      while (lastBucket >= 0 && !timeline[lastBucket]) lastBucket--;
      const slowest = Array.from(rs[0]!.slowestTimeline, (_, b) => Math.max(...rs.map((r) => r.slowestTimeline[b] ?? 0)));
      const slow = Array.from(rs[0]!.slowTimeline, (_, b) => rs.reduce((a, r) => a + (r.slowTimeline[b] ?? 0), 0));
      // Per 10 s of the phase: how many acknowledgements took over 10 ms, and the slowest.
      const perTen: string[] = [];
      for (let b0 = 0; b0 < slowest.length && slowest.slice(b0).some((ms) => ms > 0); b0 += 100) {
        perTen.push(`${b0 / 10}s:${slow.slice(b0, b0 + 100).reduce((a, n) => a + n, 0)}/${Math.round(Math.max(...slowest.slice(b0, b0 + 100)))}`);
      }
      log(`  ${name}: per 10 s, acks over 10 ms / slowest ms: ${perTen.join(' ')}`);
      let gap = 0;
      for (let b = 0, run = 0; b <= lastBucket; b++) gap = Math.max(gap, (run = timeline[b] ? 0 : run + 1));
      log(`  ${name}: ${acked} of ${set.length * wakes * readings} readings acknowledged; waiting for them upstream`);
      // The last batches of a window go when maxDelayMs since their first reading has passed.
      await stack.collector.waitUntil(() => stats.unique >= acked, { timeoutMs: MAX_DELAY_MS + 240_000, quietMs: 30_000 });
      // Requests a device gave up on (timeout) may still be taken and delivered later: wait until the gateway
      // is quiet (no new ingress for 3 s, the group's outbox empty), bounded, so phases do not overlap.
      let m1: Sample[] = await scrape(adminPort);
      const quietUntil = Date.now() + 120_000;
      let lastIngress = -1;
      let stableSince = Date.now();
      while (Date.now() < quietUntil) {
        m1 = await scrape(adminPort);
        const ingress = sum(m1, 'simbridge_ingress_messages_total');
        if (ingress !== lastIngress) {
          lastIngress = ingress;
          stableSince = Date.now();
        }
        if (Date.now() - stableSince >= 3000 && sum(m1, 'simbridge_outbox_messages', { group }) === 0 && stats.unique >= d0(m1, 'simbridge_ingress_messages_total', { group, result: 'accepted' })) break;
        await sleep(500);
      }
      await sleep(500);
      m1 = await scrape(adminPort);
      const d = (name: string, labels: Record<string, string> = {}) => sum(m1, name, labels) - sum(m0, name, labels);
      const publishesOk = d('simbridge_upstream_publishes_total', { group, result: 'ok' });
      const batchCount = d('simbridge_batch_messages_count', { group });
      const p: Phase = {
        name,
        group,
        devices: set.length,
        wakes,
        readingsPerWake: readings,
        offeredReqPerS: reqPerS,
        sent: rs.reduce((a, r) => a + r.sent, 0),
        acked,
        errors: rs.reduce((a, r) => a + r.errors, 0),
        errorKinds,
        achievedReqPerS: acked / Math.max(0.001, (lastAck - t0) / 1000),
        maxWakeLagMs: Math.max(...rs.map((r) => r.maxWakeLagMs)),
        maxConcurrentDevices: rs.reduce((a, r) => a + r.maxConcurrentDevices, 0),
        ackP50: round(quantile(hist, 0.5)),
        ackP99: round(quantile(hist, 0.99)),
        ackP99AfterWarmup: round(quantile(warm, 0.99)),
        ackMax: round(quantile(hist, 1)),
        requestP99: round(quantile(all, 0.99)),
        accepted: d0(m1, 'simbridge_ingress_messages_total', { group, result: 'accepted' }),
        delivered: stats.unique,
        duplicates: stats.duplicates,
        deliverS: stats.lastAt ? round((stats.lastAt - t0) / 1000) : null,
        billedUnits: d('simbridge_upstream_billed_units_total', { group }),
        billedUnitsCollector: stats.billedUnits,
        upstreamMessagesCollector: stats.messages,
        publishesOk,
        publishesFailed: d('simbridge_upstream_publishes_total', { group, result: 'failed' }),
        readingsPerPublish: batchCount ? round(d('simbridge_batch_messages_sum', { group }) / batchCount) : null,
        sessionsOpened: d('simbridge_upstream_connects_total', { result: 'ok' }),
        connectsFailed: d('simbridge_upstream_connects_total', { result: 'failed' }),
        outboxLeft: sum(m1, 'simbridge_outbox_messages', { group }),
        slowPer10s: perTen.join(' '),
        cpu,
      };
      const commits = (le: string) => sum(mAcked, 'simbridge_outbox_commit_seconds_bucket', { le }) - sum(m0, 'simbridge_outbox_commit_seconds_bucket', { le });
      log(`  ${name}: outbox commits ${commits('+Inf')}, of which over 10 ms ${commits('+Inf') - commits('0.01')}, over 100 ms ${commits('+Inf') - commits('0.1')}, over 1 s ${commits('+Inf') - commits('1')}`);
      log(`  ${name}: longest stretch without acks ${gap * 100} ms; gateway event loop lag since the phase began: max ${round(sum(mAcked, 'nodejs_eventloop_lag_max_seconds') * 1000)} ms, p99 ${round(sum(mAcked, 'nodejs_eventloop_lag_p99_seconds') * 1000)} ms`);
      log(
        `  ${name}: ${p.achievedReqPerS.toFixed(0)} req/s acknowledged (offered ${reqPerS}), ack p50/p99/max ${p.ackP50}/${p.ackP99}/${p.ackMax} ms (p99 after the first ${WARMUP_MS / 1000} s: ${p.ackP99AfterWarmup}), errors ${JSON.stringify(errorKinds)}; ` +
          `${p.delivered} delivered in ${p.deliverS} s; ${p.publishesOk} publishes, ${p.billedUnits} billed units (collector: ${p.upstreamMessagesCollector} messages, ${p.billedUnitsCollector} units), ${p.readingsPerPublish} readings/publish; ${p.sessionsOpened} sessions opened`,
      );
      return p;
    };

    /** Switches the meters group's batching policy by rewriting the gateway's config file and SIGHUP (a reload, docs/batching.md). */
    const setPolicy = async (batching: Record<string, unknown>) => {
      const file = join(stack.dir, 'gateway.yaml');
      const cfg = parseYaml(readFileSync(file, 'utf8')) as { groups: Record<string, { batching: unknown }> };
      cfg.groups.meters.batching = batching;
      writeFileSync(file, stringifyYaml(cfg));
      process.kill(gw.pid, 'SIGHUP');
      await sleep(1500);
      if (/configuration not reloaded/.test(gw.process.output)) throw new Error(`reload refused:\n${gw.process.output.slice(-2000)}`);
    };

    log(`window phase: ${DEVICES} devices × ${WAKES} wakes × ${READINGS} readings at ${RATE} requests/s (group meters, ${JSON.stringify(WINDOW)})`);
    const watcher = batchWatcher(stack.upstream.plainPort);
    await sleep(500);
    const W = await phase('window', setW, 'meters', WAKES, READINGS, RATE);
    watcher.stop();
    log(`  window: largest batch ${watcher.seen.maxReadings} readings, ${watcher.seen.maxBytes} bytes (of ${watcher.seen.batches} batches seen)`);
    await setPolicy({ policy: 'immediate' });
    log(`immediate phase: the same ${DEVICES} devices wake once more, ${READINGS} readings each, group meters switched to immediate (SIGHUP reload)`);
    const I = await phase('immediate', setW, 'meters', 1, READINGS, RATE);

    const figures: Record<string, number | null> = {
      devices: DEVICES,
      wakes_per_device: WAKES,
      readings_per_wake: READINGS,
      readings_window: DEVICES * WAKES * READINGS,
      billed_units_window: W.billedUnits,
      billed_units_immediate: I.billedUnits,
      // Per delivered reading, so phases that lost requests to timeouts still compare the same readings.
      billed_units_reduction: W.billedUnits && I.delivered ? round(I.billedUnits / I.delivered / (W.billedUnits / W.delivered)) : null,
      billed_units_reduction_collector: W.billedUnitsCollector && I.delivered ? round(I.billedUnitsCollector / I.delivered / (W.billedUnitsCollector / W.delivered)) : null,
      readings_delivered_window: W.delivered,
      readings_delivered_immediate: I.delivered,
      readings_per_billed_unit: W.billedUnits ? round(W.delivered / W.billedUnits) : null,
      readings_per_publish_window: W.readingsPerPublish,
      offered_req_per_s: RATE,
      achieved_req_per_s: round(W.achievedReqPerS),
      ack_p50_ms: W.ackP50,
      ack_p99_ms: W.ackP99,
      ack_max_ms: W.ackMax,
      request_p99_ms_incl_failures: W.requestP99,
      ack_p99_ms_after_warmup: W.ackP99AfterWarmup,
      accepted_by_gateway_window: W.accepted,
      achieved_req_per_s_immediate: round(I.achievedReqPerS),
      ack_p50_ms_immediate: I.ackP50,
      ack_p99_ms_immediate: I.ackP99,
      upstream_sessions_opened: W.sessionsOpened,
      upstream_sessions_opened_immediate: I.sessionsOpened,
      upstream_publishes_window: W.publishesOk,
      upstream_publishes_immediate: I.publishesOk,
      deliver_all_s_window: W.deliverS,
      deliver_all_s_immediate: I.deliverS,
      undelivered: Math.max(0, W.acked - W.delivered) + Math.max(0, I.acked - I.delivered),
      duplicates_upstream: W.duplicates + I.duplicates,
      device_errors: W.errors + I.errors,
      max_readings_per_batch: watcher.seen.maxReadings,
      max_batch_bytes: watcher.seen.maxBytes,
      prevend_s: round(vendS),
      machine_busy_pct_window: W.cpu.machine_busy_pct,
      cpu_pct_window: W.cpu.roles.gateway ?? null,
      main_thread_run_pct_window: W.cpu.main_thread_run_pct,
      main_thread_runq_wait_pct_window: W.cpu.main_thread_runq_wait_pct,
    };
    if (Object.keys(W.errorKinds).length || Object.keys(I.errorKinds).length) notes.push(`Device errors: window ${JSON.stringify(W.errorKinds)}, immediate ${JSON.stringify(I.errorKinds)}.`);
    const phases = [W, I];
    const params = {
      gateway_commit: gatewaySource().commit,
      devices: DEVICES,
      wakes_per_device: WAKES,
      readings_per_wake: READINGS,
      payload_bytes: PAYLOAD_BYTES,
      payload: 'JSON, {"kwh":…,"id":"~R<tag>:<dev>:<seq>:<ms>~","pad":"xxx…"} (spliced verbatim into the batch envelope)',
      device_topic: TOPIC,
      offered_req_per_s: RATE,
      device_behaviour: `wakes every ${round((DEVICES * READINGS) / RATE)} s (${round(RATE / READINGS)} wakes/s in all, evenly spread), sends its readings one after another, each waiting for its 202, leaves`,
      http_clients: `${WORKERS} processes × ${SOURCES_PER_WORKER} keep-alive agents (source addresses 127.0.200.2–${1 + WORKERS * SOURCES_PER_WORKER}), ≤ ${MAX_SOCKETS_PER_SOURCE} sockets each; devices dealt round-robin`,
      window_policy: WINDOW,
      immediate_policy: 'immediate (group meters switched by rewriting the config file + SIGHUP), each device waking once more',
      sims: 'pre-registered (one transaction, IMEI bound) and pre-vended with `simbridge vend` before the gateway started',
      vending_quotas: VEND_QUOTAS,
      storage_synchronous: 'full',
      upstream: `mosquitto ${mosquittoVersion()}, mutual TLS (sandbox CA)`,
      upstream_settings: 'defaults: 100 connects/s, sessions idle-close after 300 s, at most 5,000 open',
      total_runtime_s: Math.round((Date.now() - started) / 1000),
      gateway_config_override: stack.gatewayOverride,
    };
    return {
      params,
      figures,
      goals: goals(RATE),
      intro: [
        `${DEVICES} devices over HTTP each wake ${WAKES} times, each time sending ${READINGS} JSON readings of ${PAYLOAD_BYTES} bytes one after another and leaving, ${RATE} requests/s in all,`,
        `in a group batching with \`window\` (${JSON.stringify(WINDOW)}); then the same devices wake once more after the group`,
        'was switched to `immediate` (config reload); simbridge (storage.synchronous: full) carries them to a real Mosquitto over mutual TLS, one session per device.',
      ],
      notes: [
        '`billed_units_*`: deltas of `simbridge_upstream_billed_units_total{group}` over each phase, after every acknowledged reading arrived upstream; `billed_units_reduction` = (immediate units / readings delivered) / (window units / readings delivered), i.e. billed units immediate / window for the same readings (per reading, so a phase that lost requests to device timeouts is not favoured). `*_collector`: the same computed from what the upstream collector received (ceil((topic + payload) / 5120) per message).',
        'Phases are kept apart: after each, the bench waits (bounded) until the gateway has taken no request for 3 s and the group\'s outbox is empty, since requests a device gave up on (its 30 s timeout) may still be taken and delivered later; `delivered` counts every reading of the phase that arrived upstream (collector, by the phase\'s tag).',
        '`ack_*`: device-visible, from sending the request until the 202 (sent only after the reading is committed, synchronous: full), measured in the load generators; `achieved_req_per_s` = acknowledged requests / (last acknowledgement − first wake). The ack percentiles are over acknowledged requests; `request_p99_ms_incl_failures` also counts the failed ones (timeouts at 30 s, resets) with the time until they failed. `ack_p99_ms_after_warmup` leaves out the requests sent in the first ' + WARMUP_MS / 1000 + ' s of the phase (cold code, every device\'s first wake, the load generators\' keep-alive connections opening); it is shown beside the goal figure, which counts every request.',
        '`upstream_sessions_opened`: delta of `simbridge_upstream_connects_total{result="ok"}` over the window phase (`_immediate`: over the immediate phase). Sessions close 300 s after their last use (the default upstream.idleTimeoutMs), so a device\'s session opened for its first batch is still warm for the next.',
        '`max_readings_per_batch`, `max_batch_bytes`: the largest batch message seen by a second subscriber on `devices/+/batch` during the window phase (payload bytes, topic not included).',
        'The window spans wakes: a device wakes every devices × readings / rate seconds, so a batch of 23 readings (the most 200-byte readings one 5,120-byte envelope v2 holds with this topic) collects over about 8 wakes; `maxDelayMs` sends what is left after the last wake.',
        `Slow acknowledgements over time, per 10 s of each phase (by send time) as "start:slow/slowest ms" (slow: acknowledgements over 10 ms, of about ${RATE * 10} sent in those 10 s; 1 % of them is ${RATE / 10}): window ${W.slowPer10s}; immediate ${I.slowPer10s}.`,
        'The window phase has four stretches: the first seconds (every device\'s first readings, the load generators\' 1,024 keep-alive connections opening, cold code: the difference between `ack_p99_ms` and `ack_p99_ms_after_warmup`); the 50 s after the first batches fall due, while 5,000 upstream sessions open at the default 100 connects/s (TLS handshakes in aws-crt\'s event loop and Mosquitto, on the same 2 cores as everything else); the rounds in which every device\'s batch falls due within one wake cycle (7.5 s; about 670 publishes/s instead of the average 83/s); and the steady part in between. Per-thread CPU (from /proc, share of a core): main thread about 0.41 throughout, outbox writer about 0.25, upstream connection thread 0.11 while sessions open and 0.22 in a batch round, aws-crt\'s event loop 0.2 while sessions open, Mosquitto 0.19 then, the two load generators about 0.3 together.',
        'What made the difference (each measured with this bench): upstream connections on a thread of their own (aws-crt registers each callback of a connection as a libuv async handle, and libuv walks all of a loop\'s async handles on every wake-up: `perf` found 69 % of the main thread in `uv__async_io` at 5,000 sessions); registering only the one connection callback simbridge uses instead of six (the walk was still 34-37 % of the gateway\'s CPU, the connection thread 0.5 of a core, in the session-opening stretch and the batch rounds); and listening only once the worker threads have booted (the outbox writer used to start on the first commit: about 1,700 of the acknowledgements over 10 ms fell in the first 2 s).',
        '`machine_busy_pct_window` (% of one core; 200 = both of 2 cores), `cpu_pct_window` (simbridge, all threads), `main_thread_run_pct_window` / `main_thread_runq_wait_pct_window`: over the window phase\'s sending, from /proc (stat, and the main thread\'s schedstat): how long simbridge\'s main thread ran, and how long it was ready to run but waited for a core, which every acknowledgement waiting behind it waits too.',
        'The immediate phase is there to price the same readings unbatched; its acknowledgement figures are not a goal: every reading is an upstream publish, 2,000 per second on 5,000 sessions (issue 8 has the throughput benchmarks).',
        ...notes,
      ],
      extraMd: [
        '## Phases',
        '',
        '| phase | group | devices × wakes × readings | offered req/s | achieved req/s | ack p50 / p99 / max ms | device errors | accepted by gateway | delivered | deliver all s | publishes | billed units | readings / publish | sessions opened |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
        ...phases.map(
          (p) =>
            `| ${p.name} | ${p.group} | ${p.devices} × ${p.wakes} × ${p.readingsPerWake} | ${p.offeredReqPerS} | ${round(p.achievedReqPerS)} | ${p.ackP50} / ${p.ackP99} / ${p.ackMax} | ${p.errors} | ${p.accepted} | ${p.delivered} | ${p.deliverS} | ${p.publishesOk} | ${p.billedUnits} | ${p.readingsPerPublish} | ${p.sessionsOpened} |`,
        ),
        '',
      ].join('\n'),
    };
  } finally {
    await Promise.all(workers.map((w) => w.call({ cmd: 'close' }, 10_000).catch(() => undefined)));
    await stack.close();
  }
}

export const scenario: Scenario = { title: 'sleepy HTTP devices: batching and ack latency', goals: goals(2000), run: sleepy };
