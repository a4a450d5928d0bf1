import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import { devices, SIMBRIDGE_TOPIC } from '../lib/devices.ts';
import { forkWorker, LoadPool } from '../lib/load.ts';
import { newTag, warmUp } from '../lib/measure.ts';
import { IDLE_BASELINE_AFTER_MS, idleRss, MemProbe, type MemUsage } from '../lib/memory.ts';
import { rssKb } from '../lib/procstat.ts';
import type { Goal, ScenarioResult } from '../lib/report.ts';
import { gatewaySource, Stack } from '../lib/stack.ts';
import { round, sleep } from '../lib/stats.ts';
import type { FuzzResult } from '../load/fuzz.ts';

/** The gateway's output around its death: what it printed after the banner, first 60 lines. */
function crashSummary(out: string): string {
  // The report is committed: paths of the machine that ran it are not.
  const lines = out.replaceAll(gatewaySource().root, '<simbridge>').replaceAll(`${process.cwd()}/`, '<simbridge>/').split('\n');
  const fatal = lines.findIndex((l) => /FATAL|Assertion|Error|Segmentation|abort|panic/i.test(l) && !/NodeVersionSupportWarning|FastifyDeprecation/.test(l));
  const from = fatal >= 0 ? Math.max(0, fatal - 5) : Math.max(0, lines.length - 60);
  return [lines[0], ...lines.slice(from, from + 60)].join('\n');
}

/**
 * The gateway's CoAP and raw UDP ports, when it has them: from its ready signal, or from the banner of
 * a gateway from before the signal (reading only the banner left today's gateway without datagram rounds).
 */
function datagramPorts(gw: { coapPort?: number; udpPort?: number; process: { output: string } }): { coapPort?: number; udpPort?: number } {
  const banner = (label: string) => gw.process.output.match(new RegExp(`${label}\\s+\\S+:(\\d+)/udp`))?.[1];
  const coapPort = gw.coapPort ?? banner('device CoAP');
  const udpPort = gw.udpPort ?? banner('device UDP');
  return { ...(coapPort ? { coapPort: Number(coapPort) } : {}), ...(udpPort ? { udpPort: Number(udpPort) } : {}) };
}

/**
 * Scenario 5: bounded rounds of random and mutated MQTT packets (raw TCP) and raw HTTP requests
 * (malformed request lines and headers, huge bodies, bad identities) against a running simbridge while
 * one well-behaved MQTT device keeps publishing. If the gateway dies it is counted and restarted.
 */
export async function badInput(ctx: Ctx): Promise<ScenarioResult> {
  const rounds = knob('ROUNDS', 10_000, 1500, ctx);
  const durationMs = knob('FUZZ_S', 60, 20, ctx) * 1000;
  const concurrency = knob('FUZZ_CONCURRENCY', 16, 16, ctx);
  const seed = knob('SEED', 20261122, 20261122, ctx);
  const ratePerS = 50;
  // CoAP (claimed identity) and raw UDP (one static /24 of fuzzing addresses) get their rounds too, when
  // the measured gateway has them.
  const datagrams = existsSync(join(gatewaySource().root, 'config', 'lowpower.ts'));
  const stack = await Stack.start({
    gatewayOverride: datagrams
      ? {
          listeners: { coap: { enabled: true, host: '127.0.0.1', port: 0, identity: 'claimed' }, udp: { enabled: true, host: '127.0.0.1', port: 0, identity: 'static' } },
          identity: { static: [{ address: '127.0.1.0/24', imsi: devices(1, 4, SIMBRIDGE_TOPIC)[0]!.imsi }] },
        }
      : {},
  });
  let crashes = 0;
  const crashOutput: string[] = [];
  let fuzz: FuzzResult | undefined;
  let lost = 0;
  let acked = 0;
  let errors = 0;
  let duplicates = 0;
  let rssBefore: number | null = null;
  let rssAfter: number | null = null;
  // Live memory apart from garbage V8 has not collected yet (two full GCs inside the gateway first).
  const memProbe = new MemProbe();
  let memBefore: MemUsage | null = null;
  let memAfter: MemUsage | null = null;
  try {
    const startedAt = Date.now();
    let gw = await memProbe.withProbe(() => stack.startGateway());
    const good = devices(1, 3, SIMBRIDGE_TOPIC);
    // The fuzzer may present a few valid IMSIs of its own (series 4): bounded vending and sessions.
    const fuzzIds = devices(5, 4, SIMBRIDGE_TOPIC);
    const load = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: gw.mqttPort }, good, { workers: 1, reconnectPeriodMs: 250 });
    let watching = true;
    const watch = (async () => {
      while (watching) {
        await sleep(100);
        if (watching && !stack.gatewayAlive) {
          crashes++;
          const c = stack.gateway!.process.child;
          crashOutput.push(`exit ${c.exitCode ?? c.signalCode}\n` + stack.gateway!.process.output.slice(-12_000));
          ctx.log(`  simbridge died (crash ${crashes}); restarting`);
          gw = await memProbe.withProbe(() => stack.startGateway());
        }
      }
    })();
    try {
      await warmUp(stack.collector, load, 1);
      // After V8's start-up shrink (bench/lib/memory.ts), which would otherwise hide growth.
      ({ mem: memBefore, rssKb: rssBefore } = await memProbe.gcBaseline(gw.pid, await idleRss(gw.pid, startedAt)));
      const tag = newTag('v');
      const stats = stack.collector.stats(tag);
      const goodRun = load.run({ tag, mode: 'paced', window: 1000, ratePerS, durationMs: durationMs + 2000, perDeviceMax: 10_000_000, tailMs: 10_000, payloadBytes: 200, returnAcked: true });
      const fuzzer = forkWorker('fuzz');
      try {
        fuzz = await fuzzer.call<FuzzResult>(
          { cmd: 'fuzz', host: '127.0.0.1', mqttPort: gw.mqttPort, httpPort: gw.httpPort, rounds, durationMs, concurrency, seed, imsis: fuzzIds.map((d) => d.imsi), imei: fuzzIds[0].imei, ...datagramPorts(gw) },
          durationMs + 60_000,
        );
      } finally {
        fuzzer.child.kill('SIGTERM');
      }
      // The well-behaved device goes on a little after the last round, then stops.
      await sleep(2000);
      await load.stop();
      const run = await goodRun;
      await stack.collector.waitUntil(() => stats.compare(run.acked_by_device!).lost === 0, { timeoutMs: 60_000, quietMs: 15_000 });
      const cmp = stats.compare(run.acked_by_device!);
      lost = cmp.lost;
      acked = cmp.acked;
      errors = run.errors;
      duplicates = stats.duplicates;
      rssAfter = rssKb(stack.gateway!.pid);
      // The same process as before the rounds, or the comparison means nothing.
      if (crashes === 0) memAfter = await memProbe.gc(stack.gateway!.pid);
      ctx.log(`  ${fuzz.rounds} rounds in ${round(fuzz.elapsedMs / 1000)} s; crashes ${crashes}; well-behaved device: ${acked} acknowledged, ${lost} lost`);
    } finally {
      watching = false;
      await watch;
      await load.close();
    }
  } finally {
    await stack.close();
    memProbe.remove();
  }
  const f = fuzz!;
  const mqttRounds = Object.entries(f.byKind).filter(([k]) => k.startsWith('mqtt')).reduce((a, [, v]) => a + v, 0);
  const datagramRounds = (prefix: string) => Object.entries(f.byKind).filter(([k]) => k.startsWith(`${prefix}_`)).reduce((a, [, v]) => a + v, 0);
  return {
    params: {
      quick: ctx.quick,
      gateway_commit: gatewaySource().commit,
      max_rounds: rounds,
      max_duration_s: durationMs / 1000,
      concurrency,
      seed,
      well_behaved_device: `1 MQTT device, QoS 1, ${ratePerS} msgs/s, 200-byte payloads`,
      rounds_by_kind: f.byKind,
      connack_codes: f.connack,
      http_codes: f.httpCodes,
    },
    figures: {
      rounds: f.rounds,
      crashes,
      well_behaved_lost: lost,
      well_behaved_acked: acked,
      well_behaved_errors: errors,
      well_behaved_duplicates: duplicates,
      mqtt_rounds: mqttRounds,
      http_rounds: f.rounds - mqttRounds - datagramRounds('coap') - datagramRounds('udp'),
      coap_rounds: datagramRounds('coap'),
      udp_rounds: datagramRounds('udp'),
      coap_answers_2xx: f.datagramAnswers?.['2.xx'] ?? 0,
      coap_answers_4xx: f.datagramAnswers?.['4.xx'] ?? 0,
      coap_answers_5xx: f.datagramAnswers?.['5.xx'] ?? 0,
      coap_resets: f.datagramAnswers?.RST ?? 0,
      http_2xx: f.httpStatus['2xx'] ?? 0,
      http_4xx: f.httpStatus['4xx'] ?? 0,
      http_5xx: (f.httpStatus['5xx'] ?? 0) - (f.httpCodes['503'] ?? 0),
      http_408: f.httpCodes['408'] ?? 0,
      http_503: f.httpCodes['503'] ?? 0,
      mqtt_connack_3: f.connack['3'] ?? 0,
      // MQTT 5 CONNECTs refused with a reason code (any but 0x00), e.g. 0x85, 0x86, 0x97, 0x9F.
      mqtt5_connack_refused: Object.entries(f.connack).reduce((n, [code, count]) => n + (code.startsWith('v5:') && code !== 'v5:0x00' ? count : 0), 0),
      stalled_bodies: f.stalledBodies.opened,
      stalled_bodies_closed_by_gateway: f.stalledBodies.closedByGateway,
      stalled_bodies_answered_408: f.stalledBodies.answered408,
      refused_connections: f.connectErrors,
      rss_growth_mb: rssBefore !== null && rssAfter !== null ? round((rssAfter - rssBefore) / 1024) : null,
      rss_growth_mb_after_gc: memBefore && memAfter ? round((memAfter.rss - memBefore.rss) / 2 ** 20) : null,
      heap_growth_mb_after_gc: memBefore && memAfter ? round((memAfter.heapUsed - memBefore.heapUsed) / 2 ** 20) : null,
    },
    goals: GOALS,
    notes: [
      'Each round opens its own connection from a random loopback source address, writes its bytes and closes after 400 ms (MQTT) or 800 ms (HTTP), or when the gateway closes first. Rounds run 16 at a time, up to `max_rounds` or `max_duration_s`.',
      'MQTT kinds: random bytes; mutated CONNECT (bit flips, insertions, deletions, truncation, a remaining length of 256 MB); CONNECTs with odd protocol names, levels, flags and client ids; a valid CONNECT followed by a mix of valid and mutated packets (wildcard/`$`/over-long/NUL topics, QoS 2, packet id 0, reserved and server-only packet types, a second CONNECT); packets before CONNECT; publishes over 128 KB; partial packets.',
      'MQTT 5 kinds (`mqtt5_*`): CONNECTs with odd properties (Receive Maximum or Maximum Packet Size 0, an authentication method, session expiry up to 2^32-1); mutated MQTT 5 CONNECTs; a valid MQTT 5 CONNECT then publishes with topic alias 0, unset or above the maximum, user properties, message expiry, property bytes that mean nothing, AUTH, DISCONNECT with reason codes, PUBACK for ids never sent; a burst of 200-400 QoS 1 publishes past the Receive Maximum in one write; a remaining length of 256 MB after CONNECT. MQTT 5 CONNACKs are counted as `v5:0x..` beside the 3.1.1 return codes.',
      'HTTP kinds: random bytes; bad request lines; malformed, duplicated, conflicting or 70 KB headers (including Content-Length vs Transfer-Encoding); bad chunked encodings; bodies declared or sent beyond 128 KB (up to 10 GB declared, ≤ 1 MB sent); missing and malformed identities; bad paths and queries (wildcards, NUL, traversal, qos values); pipelined mixes; slow headers.',
      'Floods: retained publishes of 50-100 KB on distinct topics after a valid CONNECT (`mqtt_retained_flood`); 100 MQTT / 300 HTTP connections at once from one address, each held 3 s and drawn at a quarter of the rate of the other kinds (`mqtt_connection_flood` from 127.0.3.3: half silent after the handshake, half CONNECT as one SIM under IMEISV variants with keepalive 0; `http_connection_flood` from 127.0.3.4: requests without identity): past the per-address cap they get CONNACK 3 (`mqtt_connack_3`) or 503 (`http_503`); request bodies that stop after a few bytes and are never closed by the fuzzer (`http_stalled_body`): the gateway must close them (`stalled_bodies_closed_by_gateway`, with a 408: `stalled_bodies_answered_408`); the fuzzer waits up to 25 s after the last round for that.',
      '`http_5xx` counts answers that were server errors other than the 503 of a connection cap (an unhandled case); 4xx answers and closed connections are the expected refusals. `crashes`: times the gateway process died (it is then restarted so the run can go on). `rss_growth_mb`: simbridge RSS after the rounds minus before (read once settled, at least ' + IDLE_BASELINE_AFTER_MS / 1000 + ' s after start), garbage V8 has not collected yet included: how much of it there is depends on when its last full collection fell, so the figure moves between runs of the same code. `rss_growth_mb_after_gc` and `heap_growth_mb_after_gc`: the same growth right after two forced full collections in the gateway before and after the rounds (bench/lib/mem-probe.mjs; RSS, and the V8 heap in use): what the rounds left behind; null when the gateway crashed in between.',
      ...(f.serverErrors.length ? [`Examples of 5xx: ${f.serverErrors.map((e) => '`' + e.replace(/`/g, "'") + '`').join('; ')}`] : []),
    ],
    extraMd: crashOutput.length
      ? ['## Crash output', '', `simbridge died ${crashes} time(s). Its last output before the first death (banner lines removed):`, '', '```', crashSummary(crashOutput[0]), '```', ''].join('\n')
      : undefined,
  };
}

const GOALS: Goal[] = [
  { text: 'the gateway survives every round', figure: 'crashes', op: '==', target: 0 },
  { text: 'the well-behaved device loses nothing', figure: 'well_behaved_lost', op: '==', target: 0 },
  { text: 'memory stays bounded under retained, slow-body and connection floods (≤ 20 MB)', figure: 'rss_growth_mb', op: '<=', target: 20 },
  { text: 'what the floods leave behind, after full garbage collections, ≤ 20 MB', figure: 'rss_growth_mb_after_gc', op: '<=', target: 20 },
];

export const scenario: Scenario = { title: 'malformed MQTT and HTTP input beside a well-behaved device', goals: GOALS, run: badInput };
