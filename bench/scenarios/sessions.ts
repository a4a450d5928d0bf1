// Sessions benchmark (issue 5): memory of 10,000 idle local MQTT devices and of 1,000 warm upstream
// sessions (mutual TLS, each device as itself) against a real Mosquitto, then recovery of those 1,000
// sessions after an upstream outage, against the pacing minimum (sessions / upstream.connectsPerSecond).
// Knobs: BENCH_DEVICES (10,000), BENCH_WARM (1,000), BENCH_OUTAGE_S (15).
//
// Every part is its own process on loopback (bench/lib/stack.ts): sandbox (vending), upstream Mosquitto
// (mutual TLS, sandbox CA), collector (mosquitto_sub), simbridge, and 2 load generators
// (bench/load/worker.ts) holding the devices, each device on its own source address 127.0.x.y.
import { join } from 'node:path';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import { devices, nowMs, SIMBRIDGE_TOPIC, type DeviceSpec } from '../lib/devices.ts';
import { quantile, merge, newHist } from '../lib/hist.ts';
import { forkWorker, type Worker } from '../lib/load.ts';
import { newTag } from '../lib/measure.ts';
import { idleRss, IDLE_BASELINE_AFTER_MS, MemProbe, settledRss, type MemUsage } from '../lib/memory.ts';
import { mosquittoVersion } from '../lib/mosquitto.ts';
import { scrape, sum } from '../lib/prom.ts';
import type { Goal, ScenarioResult } from '../lib/report.ts';
import { gatewaySource, Stack } from '../lib/stack.ts';
import { round, sleep } from '../lib/stats.ts';
import type { ConnectResult, PublishResult, StatusResult } from '../load/worker.ts';
import { openDatabase } from '../../storage/db.ts';
import { SimStore } from '../../storage/sims.ts';

const WORKERS = 2;
const CONNECTS_PER_S = 100; // simbridge's default upstream.connectsPerSecond, left as it is
const RETRY_MAX_DELAY_MS = 5000;
const PAYLOAD_BYTES = 64;

const GOALS: Goal[] = [
  { text: '≤ 64 KB RSS per idle local MQTT device', figure: 'rss_per_idle_device_kb', op: '<=', target: 64 },
  { text: '≤ 120 KB RSS per warm upstream session', figure: 'rss_per_warm_session_kb', op: '<=', target: 120 },
];

const perKb = (a: MemUsage | null, b: MemUsage | null, key: keyof MemUsage, n: number) => (a && b && n ? round((b[key] - a[key]) / 1024 / n) : null);

/** One QoS 1 message from each device in [fromIdx, toIdx) (also used by the growth scenario to warm sessions). */
export async function publishAll(workers: Worker[], tag: string, fromIdx: number, toIdx: number, seq: number, timeoutMs: number) {
  const rs = await Promise.all(
    workers.map((w) => w.call<PublishResult>({ cmd: 'publish', tag, fromIdx, toIdx, seq, payloadBytes: PAYLOAD_BYTES, timeoutMs }, timeoutMs + 10_000)),
  );
  const hist = newHist();
  rs.forEach((r) => merge(hist, r.ackHist));
  const errorKinds: Record<string, number> = {};
  for (const r of rs) for (const [k, v] of Object.entries(r.errorKinds)) errorKinds[k] = (errorKinds[k] ?? 0) + v;
  return {
    sent: rs.reduce((a, r) => a + r.sent, 0),
    acked: rs.reduce((a, r) => a + r.acked, 0),
    errors: rs.reduce((a, r) => a + r.errors, 0),
    errorKinds,
    ackP99: round(quantile(hist, 0.99)),
    hist,
    lastAckAt: Math.max(...rs.map((r) => r.lastAckAt)),
  };
}

export async function status(workers: Worker[]): Promise<{ connected: number; closesAfterConnect: number }> {
  const rs = await Promise.all(workers.map((w) => w.call<StatusResult>({ cmd: 'status' }, 10_000)));
  return { connected: rs.reduce((a, r) => a + r.connected, 0), closesAfterConnect: rs.reduce((a, r) => a + r.closesAfterConnect, 0) };
}

/** Registers every SIM (group default, IMEI bound) in the gateway's database in one transaction before it starts, so a CONNECT writes nothing. */
export function registerSims(stack: Stack, specs: DeviceSpec[]): void {
  const db = openDatabase({ file: join(stack.dir, 'gateway', 'simbridge.db'), synchronous: 'normal' });
  const sims = new SimStore(db);
  db.transaction(() => {
    for (const s of specs) sims.register({ imsi: s.imsi, group: 'default', thingName: `sim-${s.imsi}`, boundImei: s.imei });
  })();
  db.close();
}

/** Connects `specs` as idle MQTT devices (keepalive 60 s), dealt round-robin over `workers` (load worker processes). */
export async function connectIdle(workers: Worker[], mqttPort: number, specs: DeviceSpec[]): Promise<{ connected: number; errorKinds: Record<string, number>[]; seconds: number }> {
  const t0 = Date.now();
  const n = workers.length;
  const conn = await Promise.all(
    workers.map((w, k) =>
      w.call<ConnectResult>(
        { cmd: 'connect', target: { kind: 'mqtt', host: '127.0.0.1', port: mqttPort }, devices: specs.filter((_, i) => i % n === k), reconnectPeriodMs: 0, concurrency: 50, keepaliveS: 60, deviceTimeoutMs: 30_000, timeoutMs: 150_000 },
        170_000,
      ),
    ),
  );
  return { connected: conn.reduce((a, r) => a + r.connected, 0), errorKinds: conn.map((r) => r.errorKinds), seconds: (Date.now() - t0) / 1000 };
}

async function sessions(ctx: Ctx): Promise<ScenarioResult> {
  const DEVICES = knob('DEVICES', 10_000, 1000, ctx);
  const WARM = Math.min(DEVICES, knob('WARM', 1000, 200, ctx));
  const OUTAGE_S = knob('OUTAGE_S', 15, 5, ctx);
  const started = Date.now();
  const log = (msg: string) => ctx.log(`  ${msg}`);
  const memProbe = new MemProbe();
  const notes: string[] = [];
  const figures: Record<string, number | null> = { devices: DEVICES, warm_sessions: WARM };
  const stack = await Stack.start({
    gatewayOverride: {
      upstream: {
        retryMaxDelayMs: RETRY_MAX_DELAY_MS,
        maxSessions: 2 * WARM + 100,
        // The warm sessions must stay open for the whole run (default 300 s is close to it).
        idleTimeoutMs: 1_800_000,
        connectsPerSecond: CONNECTS_PER_S,
      },
      // The sandbox enforces no quota here; simbridge's own client pacing (AWS defaults, 15/s for
      // certificates) would make vending the 1,000 warm devices take 67 s: raised, vending is not measured.
      vending: { quotas: { CreateCertificateFromCsr: 250, AttachPolicy: 250, CreateThing: 250, AttachThingPrincipal: 250 } },
    },
  });
  const workers: Worker[] = [];
  try {
    // ---- the registry: all SIMs in one transaction, IMEI bound, so a CONNECT writes nothing ----
    const specs: DeviceSpec[] = devices(DEVICES, 1, SIMBRIDGE_TOPIC);
    const t0 = Date.now();
    registerSims(stack, specs);
    log(`${DEVICES} SIMs registered in ${Date.now() - t0} ms`);

    const startedAt = Date.now();
    const gw = await memProbe.withProbe(() => stack.startGateway());
    await sleep(500);
    const adminPort = gw.adminPort;
    if (!adminPort) throw new Error('simbridge serves no admin API (its ready signal has no admin port)');
    const metrics = () => scrape(adminPort);
    const rss0 = await idleRss(gw.pid, startedAt);
    const { mem: mem0, rssKb: rss0b } = await memProbe.gcBaseline(gw.pid, rss0);
    log(`simbridge up (pid ${gw.pid}), idle RSS ${round(rss0! / 1024)} MB (after a full GC ${mem0 ? round(mem0.rss / 2 ** 20) : '?'} MB)`);

    // ---- 10,000 idle devices over local MQTT ----
    for (let k = 0; k < WORKERS; k++) workers.push(forkWorker('worker'));
    const { connected, errorKinds, seconds: connectS } = await connectIdle(workers, gw.mqttPort, specs);
    log(`${connected}/${DEVICES} devices connected in ${connectS.toFixed(1)} s ${JSON.stringify(errorKinds)}`);
    if (connected < DEVICES) notes.push(`Only ${connected} of ${DEVICES} devices connected: ${JSON.stringify(errorKinds)}.`);
    figures.connected_devices = connected;
    figures.connect_all_s = round(connectS);
    const rss1 = await settledRss(gw.pid);
    const st1 = await status(workers);
    figures.rss_idle_gateway_mb = round(rss0! / 1024);
    figures.rss_with_idle_devices_mb = round(rss1! / 1024);
    figures.rss_per_idle_device_kb = connected ? round((rss1! - rss0b!) / connected) : null;
    const { mem: mem1, rssKb: rss1b } = await memProbe.gcBaseline(gw.pid, rss1);
    figures.rss_per_idle_device_kb_after_gc = perKb(mem0, mem1, 'rss', connected);
    figures.heap_per_idle_device_kb = perKb(mem0, mem1, 'heapUsed', connected);
    log(`RSS with ${st1.connected} idle devices: ${round(rss1! / 1024)} MB → ${figures.rss_per_idle_device_kb} KB/device`);

    // ---- 1,000 warm upstream sessions: one QoS 1 message each (vending + session) ----
    const tagW = newTag('w');
    const statsW = stack.collector.stats(tagW);
    // In two halves with an RSS reading between them: what the second half adds is what one more warm
    // session costs once some are open (see the notes).
    const half = Math.floor(WARM / 2);
    const tw = nowMs();
    const warmA = await publishAll(workers, tagW, 0, half, 0, 60_000);
    const arrivedA = await stack.collector.waitUntil(() => statsW.unique >= warmA.acked, { timeoutMs: 180_000 });
    const warmAS = ((statsW.lastAt || nowMs()) - tw) / 1000;
    const sessionsHalf = sum(await metrics(), 'simbridge_upstream_sessions');
    const rssHalf = await settledRss(gw.pid);
    const tw2 = nowMs();
    const warmB = await publishAll(workers, tagW, half, WARM, 0, 60_000);
    const arrived = arrivedA && (await stack.collector.waitUntil(() => statsW.unique >= warmA.acked + warmB.acked, { timeoutMs: 180_000 }));
    const warmS = warmAS + ((statsW.lastAt || nowMs()) - tw2) / 1000;
    const warmHist = newHist();
    merge(warmHist, warmA.hist);
    merge(warmHist, warmB.hist);
    const warm = { acked: warmA.acked + warmB.acked, ackP99: round(quantile(warmHist, 0.99)) };
    let m = await metrics();
    const sessionsOpen = sum(m, 'simbridge_upstream_sessions');
    log(`warm-up: ${warm.acked}/${WARM} acked (p99 ${warm.ackP99} ms), ${statsW.unique} arrived upstream in ${warmS.toFixed(1)} s; ${sessionsOpen} upstream sessions open`);
    if (!arrived) notes.push(`Warm-up: only ${statsW.unique} of ${warm.acked} acknowledged messages arrived upstream within 180 s.`);
    figures.warm_up_s = round(warmS);
    figures.upstream_sessions_open_warm = sessionsOpen;
    const rss2 = await settledRss(gw.pid);
    figures.rss_with_warm_sessions_mb = round(rss2! / 1024);
    figures.rss_per_warm_session_kb = sessionsOpen ? round((rss2! - rss1b!) / sessionsOpen) : null;
    figures.upstream_sessions_open_half = sessionsHalf;
    figures.rss_per_additional_warm_session_kb = sessionsOpen > sessionsHalf && rssHalf !== null ? round((rss2! - rssHalf) / (sessionsOpen - sessionsHalf)) : null;
    const mem2 = await memProbe.gc(gw.pid);
    figures.rss_per_warm_session_kb_after_gc = perKb(mem1, mem2, 'rss', sessionsOpen);
    figures.heap_per_warm_session_kb = perKb(mem1, mem2, 'heapUsed', sessionsOpen);
    figures.external_per_warm_session_kb = perKb(mem1, mem2, 'external', sessionsOpen);
    figures.warm_ack_p99_ms = warm.ackP99;
    log(`after full GCs: idle device ${figures.rss_per_idle_device_kb_after_gc} KB RSS (${figures.heap_per_idle_device_kb} KB JS heap); warm session ${figures.rss_per_warm_session_kb_after_gc} KB RSS (${figures.heap_per_warm_session_kb} KB JS heap, ${figures.external_per_warm_session_kb} KB external)`);
    log(`RSS with ${sessionsOpen} warm sessions: ${round(rss2! / 1024)} MB → ${figures.rss_per_warm_session_kb} KB/session; from ${sessionsHalf} to ${sessionsOpen}: ${figures.rss_per_additional_warm_session_kb} KB per additional session`);
    const connectsOk0 = sum(m, 'simbridge_upstream_connects_total', { result: 'ok' });
    const connectsFailed0 = sum(m, 'simbridge_upstream_connects_total', { result: 'failed' });

    // ---- upstream outage and recovery ----
    const tStop = Date.now();
    await stack.upstream.broker.stop('SIGTERM');
    log('upstream Mosquitto stopped');
    for (let i = 0; i < 60; i++) {
      m = await metrics();
      if (sum(m, 'simbridge_upstream_sessions') === 0) break;
      await sleep(250);
    }
    figures.sessions_open_after_stop = sum(m, 'simbridge_upstream_sessions');
    const tagO = newTag('o');
    const statsO = stack.collector.stats(tagO);
    const out = await publishAll(workers, tagO, 0, WARM, 1, 60_000);
    log(`during the outage: ${out.acked}/${WARM} acknowledged durably (ack p99 ${out.ackP99} ms), errors ${JSON.stringify(out.errorKinds)}`);
    figures.outage_acked = out.acked;
    figures.outage_ack_p99_ms = out.ackP99;
    const wait = tStop + OUTAGE_S * 1000 - Date.now();
    if (wait > 0) await sleep(wait);
    m = await metrics();
    const failedDuringOutage = sum(m, 'simbridge_upstream_connects_total', { result: 'failed' }) - connectsFailed0;
    log(`restarting the upstream after ${((Date.now() - tStop) / 1000).toFixed(1)} s; ${failedDuringOutage} failed connects meanwhile`);
    await stack.upstream.broker.start();
    const restartAt = nowMs();
    let sessionsBackAt: number | null = null;
    let sessionsMax = 0;
    const deadline = Date.now() + 150_000;
    while (Date.now() < deadline) {
      m = await metrics().catch(() => m);
      const open = sum(m, 'simbridge_upstream_sessions');
      sessionsMax = Math.max(sessionsMax, open);
      if (sessionsBackAt === null && open >= WARM) sessionsBackAt = nowMs();
      if (statsO.unique >= out.acked && sessionsBackAt !== null) break;
      await sleep(250);
    }
    const recovered = statsO.unique >= out.acked;
    const recoveryS = recovered ? (statsO.lastAt - restartAt) / 1000 : null;
    const pacingMinS = WARM / CONNECTS_PER_S;
    figures.outage_s = round((restartAt - tStop) / 1000);
    figures.recovery_s = round(recoveryS);
    figures.pacing_min_s = pacingMinS;
    figures.recovery_ratio_to_pacing_min = recoveryS === null ? null : round(recoveryS / pacingMinS);
    figures.sessions_back_s = sessionsBackAt === null ? null : round((sessionsBackAt - restartAt) / 1000);
    figures.outage_messages_arrived = statsO.unique;
    figures.outage_messages_lost = Math.max(0, out.acked - statsO.unique);
    figures.duplicates_upstream = statsO.duplicates;
    figures.upstream_connects_failed_during_outage = failedDuringOutage;
    figures.upstream_connects_ok_recovery = sum(m, 'simbridge_upstream_connects_total', { result: 'ok' }) - connectsOk0;
    figures.upstream_connects_failed_after_restart = sum(m, 'simbridge_upstream_connects_total', { result: 'failed' }) - connectsFailed0 - failedDuringOutage;
    const st2 = await status(workers);
    figures.local_devices_connected_at_end = st2.connected;
    log(
      `recovery: ${statsO.unique}/${out.acked} arrived, last ${recoveryS?.toFixed(1)} s after the restart (pacing minimum ${pacingMinS} s); sessions back to ${WARM} after ${figures.sessions_back_s} s; ${st2.connected} local devices still connected`,
    );
    if (!recovered) notes.push(`Recovery: only ${statsO.unique} of ${out.acked} messages acknowledged during the outage arrived within 150 s of the restart.`);
    const warnLines = gw.process.output.split('\n').filter((l) => /upstream delivery failed/.test(l)).length;
    figures.gateway_delivery_retry_warnings = warnLines;

    const params = {
      gateway_commit: gatewaySource().commit,
      devices: DEVICES,
      warm_sessions: WARM,
      load_processes: WORKERS,
      source_addresses: `${DEVICES} (one per device, 127.0.0.2 … ${specs.at(-1)!.localAddress})`,
      device_protocol: 'MQTT 3.1.1 (mqtt.js), clean session, keepalive 60 s, claimed identity, QoS 1',
      sims: 'pre-registered in one transaction (group default, IMEI bound)',
      payload_bytes: PAYLOAD_BYTES,
      upstream: `mosquitto ${mosquittoVersion()}, mutual TLS (sandbox CA), require_certificate`,
      upstream_connects_per_second: CONNECTS_PER_S,
      upstream_retry_max_delay_ms: RETRY_MAX_DELAY_MS,
      upstream_max_sessions: 2 * WARM + 100,
      upstream_idle_timeout_ms: 1_800_000,
      vending_quotas: 'CreateCertificateFromCsr, AttachPolicy, CreateThing, AttachThingPrincipal raised to 250/s (sandbox unthrottled)',
      outage_s_target: OUTAGE_S,
      storage_synchronous: 'full',
      total_runtime_s: Math.round((Date.now() - started) / 1000),
      gateway_config_override: stack.gatewayOverride,
    };
    return {
      params,
      figures,
      goals: GOALS,
      intro: [
        `${DEVICES} MQTT devices connect to simbridge and stay idle; then ${WARM} of them publish one QoS 1 message each, so each is vended`,
        'and holds its own upstream session (mutual TLS, as itself) to a real Mosquitto. Then the upstream is stopped, the same',
        `${WARM} devices publish once more (acknowledged from disk), and the upstream is started again on the same ports after about ${OUTAGE_S} s.`,
      ],
      notes: [
        '`rss_idle_gateway_mb`: the started gateway before any device, its two worker threads included (the outbox writer and one upstream connection thread, each a V8 isolate with its modules; both boot before the device ports open), read ' + IDLE_BASELINE_AFTER_MS / 1000 + ' s after start, once V8 has shrunk the heaps of the freshly started process (its memory reducer, about 8 s after start); runs before 2026-11-22 11:00 read it earlier, which made `rss_per_idle_device_kb` too small.',
        '`rss_per_idle_device_kb` = (simbridge VmRSS with every device connected and idle − VmRSS of the started gateway before any device) / devices; each RSS is read once it has settled (two samples 1 s apart within 1 %; the baseline of each delta is read again after the GC probe below, so the probe does not shrink the delta).',
        '`rss_per_warm_session_kb` = (VmRSS after the warm-up − VmRSS with idle devices) / upstream sessions open (`simbridge_upstream_sessions`). It includes everything the first message brings: vending (key, certificate, cached credentials), the upstream MQTT connection and its TLS state (OpenSSL and the connection thread\'s heap with the default node client; aws-crt\'s native sessions with `upstream.client: aws-crt`), the message path and whatever garbage the V8 heap has not returned. The sessions open in two halves with an RSS reading between them (the pause is left out of `warm_up_s`): `rss_per_additional_warm_session_kb` = (VmRSS after the warm-up − VmRSS after the first half) / the sessions the second half opened. Per-session RSS is not constant in the session count (measured 2026-11-22, not taken apart): about 190 KB per additional session from 500 to 1,000, but 98 KB per session overall with 3,000 (`BENCH_WARM=3000`). It also varies between runs of the same code, by more than a tenth (bench/results/changes.md, 2026-11-30). The main thread\'s share is small: a heap snapshot before and after the warm-up holds 3.7 KB more per session, half of it compiled code; the rest is OpenSSL\'s context and connection per session and the connection thread\'s heap.',
        `\`recovery_s\`: from the moment the restarted upstream Mosquitto accepts connections until the last of the ${WARM} messages acknowledged during the outage arrived at the collector (mosquitto_sub on the upstream's plain listener, its own arrival timestamps). \`recovery_ratio_to_pacing_min\` divides it by ${WARM} / upstream.connectsPerSecond (${CONNECTS_PER_S}/s) = ${pacingMinS} s. \`sessions_back_s\`: until \`simbridge_upstream_sessions\` (scraped every 250 ms) was back to ${WARM}.`,
        '`*_after_gc`, `heap_*`, `external_*`: the same deltas from `process.memoryUsage()` inside simbridge right after two forced full GCs (bench/lib/mem-probe.mjs, loaded into the gateway only with NODE_OPTIONS=\"--expose-gc --import=…\", triggered by SIGUSR2 after each settled reading): live memory without uncollected garbage; heap = V8 JS heap, external = memory outside the heap held by JS objects (Buffers); the rest of RSS is native (OpenSSL, sockets, allocator, aws-crt when chosen) or the worker threads\' heaps, which these figures do not collect or count (process.memoryUsage() is the main thread\'s).',
        `Bench settings (not defaults): upstream.retryMaxDelayMs ${RETRY_MAX_DELAY_MS} (default 30000) so session retry backoff does not dominate recovery; upstream.maxSessions ${2 * WARM + 100}; upstream.idleTimeoutMs 1800000; vending quotas raised (the sandbox does not throttle here). upstream.connectsPerSecond stays at its default ${CONNECTS_PER_S}.`,
        '`outage_ack_p99_ms`, `warm_ack_p99_ms`: PUBACK latency seen by the devices (durable commit) while 1,000 sessions were being opened or retried. Each upstream connection costs a TLS context and handshake on the thread that holds it: a connection thread by default (`upstream.threads: 1`), the main thread that acknowledges devices with `upstream.threads: 0`; failed attempts during an outage cost one each too (`upstream_connects_failed_during_outage`).',
        ...notes,
      ],
    };
  } finally {
    await Promise.all(workers.map((w) => w.call({ cmd: 'close' }, 10_000).catch(() => undefined)));
    await stack.close();
    memProbe.remove();
  }
}

export const scenario: Scenario = { title: 'idle local devices, warm upstream sessions, recovery after an outage', goals: GOALS, run: sessions };
