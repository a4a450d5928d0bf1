import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import { devices, SIMBRIDGE_TOPIC, UPSTREAM_TOPIC } from '../lib/devices.ts';
import { LoadPool } from '../lib/load.ts';
import { measuredRun, newTag, warmUp, type RunFigures } from '../lib/measure.ts';
import { defaultBridgeSettings, mosquittoVersion } from '../lib/mosquitto.ts';
import { profileScenario } from '../lib/profile.ts';
import { goalMet, type Goal, type ScenarioResult } from '../lib/report.ts';
import { gatewaySource, Stack } from '../lib/stack.ts';
import { putSummary, round } from '../lib/stats.ts';
import { runTable } from './throughput.ts';

const PAYLOAD_BYTES = 200;
const GOALS: Goal[] = [{ text: 'simbridge / Mosquitto bridge throughput ≥ 0.5', figure: 'ratio', op: '>=', target: 0.5 }];
/** The batched pass: per device, up to 100 readings or one 5 KB billing unit, at most 1 s late. */
const BATCHING = { policy: 'window', maxMessages: 100, maxBytes: 5120, maxDelayMs: 1000 };

/** A held bridge stalls within a second (see startHeldBridge): stop waiting for stragglers after this long. */
const HELD_DRAIN_MS = 30_000;

/**
 * Scenario 2: the same load through simbridge and through a Mosquitto bridge (a second Mosquitto whose
 * `connection` carries devices/# to the same upstream over TLS as one vended identity), and through the
 * same bridge held to IoT Core's quotas on its one connection (its upstream is the sandbox's data plane:
 * 100 publishes and 512 KiB per second, the excess dropped without PUBACK), alternating runs in one
 * session so each ratio compares neighbours.
 */
export async function bridgeCompare(ctx: Ctx): Promise<ScenarioResult> {
  const n = knob('DEVICES', 100, 100, ctx);
  const repeats = knob('REPEATS', 3, 1, ctx);
  const durationMs = knob('DURATION_S', 6, 5, ctx) * 1000;
  const window = knob('WINDOW', 4, 4, ctx);
  const stack = await Stack.start();
  const sim: RunFigures[] = [];
  const bri: RunFigures[] = [];
  const held: RunFigures[] = [];
  const heldPass = knob('HELD', 1, 1, ctx) === 1;
  let batched: RunFigures | undefined;
  const userOverride = Object.keys(stack.gatewayOverride).length > 0;
  const batchedPass = !userOverride && knob('BATCHED', 1, 1, ctx) === 1;
  try {
    const gw = await stack.startGateway();
    const bridge = await stack.startBridge(defaultBridgeSettings);
    const simDevices = devices(n, 1, SIMBRIDGE_TOPIC);
    // Same IMSIs' shape, own series; a bridge has no vending, the devices publish to the upstream topic directly.
    const bridgeDevices = devices(n, 2, UPSTREAM_TOPIC, n);
    const heldDevices = devices(n, 3, UPSTREAM_TOPIC, 2 * n);
    const simLoad = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: gw.mqttPort }, simDevices, { workers: 2 });
    const bridgeLoad = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: bridge.port }, bridgeDevices, { workers: 2 });
    try {
      await warmUp(stack.collector, simLoad, n);
      await warmUp(stack.collector, bridgeLoad, n);
      for (let i = 0; i < repeats; i++) {
        const s = await measuredRun(stack.collector, simLoad, { tag: newTag('s'), mode: 'closed', window, durationMs, payloadBytes: PAYLOAD_BYTES, pid: gw.pid });
        const b = await measuredRun(stack.collector, bridgeLoad, {
          tag: newTag('b'),
          mode: 'closed',
          window,
          durationMs,
          payloadBytes: PAYLOAD_BYTES,
          pid: bridge.broker.pid,
          quietMs: 8000,
        });
        sim.push(s);
        bri.push(b);
        ctx.log(`  pair ${i + 1}/${repeats}: simbridge ${round(s.msgs_per_s)} msgs/s, bridge ${round(b.msgs_per_s)} msgs/s (${b.undelivered} acknowledged but not delivered), ratio ${round(s.msgs_per_s / b.msgs_per_s)}`);
        if (!heldPass) continue;
        // A fresh held bridge and fresh devices per run: the last run left its in-flight window stuck.
        const hb = await stack.startHeldBridge(defaultBridgeSettings);
        const heldLoad = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: hb.port }, heldDevices, { workers: 2 });
        try {
          const h = await measuredRun(stack.heldCollector!, heldLoad, {
            tag: newTag('q'),
            mode: 'closed',
            window,
            durationMs,
            payloadBytes: PAYLOAD_BYTES,
            pid: hb.broker.pid,
            quietMs: 8000,
            drainTimeoutMs: HELD_DRAIN_MS,
          });
          held.push(h);
          ctx.log(`  held bridge ${i + 1}/${repeats}: ${round(h.msgs_per_s)} msgs/s delivered, ${h.acked} acknowledged to devices, ${h.undelivered} of them never delivered; ratio at IoT Core limits ${h.msgs_per_s > 0 ? round(s.msgs_per_s / h.msgs_per_s) : 'n/a'}`);
        } finally {
          await heldLoad.close();
        }
      }
    } finally {
      await simLoad.close();
      await bridgeLoad.close();
    }
    if (batchedPass) {
      // The same load once more with a batching policy (a config override), for readings per billed unit.
      await stack.stopGateway('SIGTERM');
      const gwb = await stack.startGateway({ override: { groups: { default: { batching: BATCHING } } } });
      const load = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: gwb.mqttPort }, simDevices, { workers: 2 });
      try {
        await warmUp(stack.collector, load, n);
        batched = await measuredRun(stack.collector, load, { tag: newTag('z'), mode: 'closed', window, durationMs, payloadBytes: PAYLOAD_BYTES, pid: gwb.pid });
        ctx.log(`  batched simbridge: ${round(batched.msgs_per_s)} readings/s delivered, ${round(batched.readings_per_billed_unit)} readings per billed unit`);
      } finally {
        await load.close();
      }
      await stack.stopGateway('SIGTERM');
    }
    const figures: Record<string, number | null> = {};
    putSummary(figures, 'simbridge_msgs_per_s', sim.map((r) => r.msgs_per_s));
    putSummary(figures, 'bridge_msgs_per_s', bri.map((r) => r.msgs_per_s));
    putSummary(figures, 'ratio', sim.map((r, i) => r.msgs_per_s / bri[i].msgs_per_s));
    figures.batched_readings_per_billed_unit = userOverride
      ? round(sim.reduce((a, r) => a + (r.readings_per_billed_unit ?? 0), 0) / sim.length)
      : batched
        ? round(batched.readings_per_billed_unit)
        : null;
    figures.simbridge_batched_msgs_per_s = batched ? round(batched.msgs_per_s) : null;
    figures.simbridge_batched_e2e_p99_ms = batched ? batched.e2e_p99_ms : null;
    figures.simbridge_batched_cpu_us_per_msg = batched ? round(batched.cpu_us_per_msg) : null;
    putSummary(figures, 'simbridge_readings_per_billed_unit', sim.map((r) => r.readings_per_billed_unit));
    putSummary(figures, 'bridge_readings_per_billed_unit', bri.map((r) => r.readings_per_billed_unit));
    putSummary(figures, 'simbridge_ack_p99_ms', sim.map((r) => r.ack_p99_ms));
    putSummary(figures, 'bridge_ack_p99_ms', bri.map((r) => r.ack_p99_ms));
    putSummary(figures, 'simbridge_e2e_p99_ms', sim.map((r) => r.e2e_p99_ms));
    putSummary(figures, 'bridge_e2e_p99_ms', bri.map((r) => r.e2e_p99_ms));
    putSummary(figures, 'simbridge_cpu_us_per_msg', sim.map((r) => r.cpu_us_per_msg));
    putSummary(figures, 'bridge_cpu_us_per_msg', bri.map((r) => r.cpu_us_per_msg));
    figures.simbridge_undelivered = sim.reduce((a, r) => a + r.undelivered, 0);
    figures.bridge_undelivered = bri.reduce((a, r) => a + r.undelivered, 0);
    if (heldPass) {
      // A held bridge that delivered nothing has no finite ratio: null rather than Infinity.
      putSummary(figures, 'ratio_at_iot_core_limits', held.map((h, i) => (h.msgs_per_s > 0 ? sim[i].msgs_per_s / h.msgs_per_s : null)));
      putSummary(figures, 'held_bridge_msgs_per_s', held.map((r) => r.msgs_per_s));
      putSummary(figures, 'held_bridge_acked_msgs_per_s', held.map((r) => r.acked_msgs_per_s));
      putSummary(figures, 'held_bridge_ack_p99_ms', held.map((r) => r.ack_p99_ms));
      putSummary(figures, 'held_bridge_cpu_us_per_msg', held.map((r) => r.cpu_us_per_msg));
      figures.held_bridge_acked = held.reduce((a, r) => a + r.acked, 0);
      figures.held_bridge_delivered = held.reduce((a, r) => a + r.delivered, 0);
      figures.held_bridge_acked_undelivered = held.reduce((a, r) => a + r.undelivered, 0);
    }

    const result: ScenarioResult = {
      params: {
        quick: ctx.quick,
        gateway_commit: gatewaySource().commit,
        devices_each: n,
        qos: 1,
        payload_bytes: PAYLOAD_BYTES,
        window_per_device: window,
        run_s: durationMs / 1000,
        repeats,
        simbridge: 'one upstream session per device, synchronous: full, immediate delivery',
        bridge: `mosquitto ${mosquittoVersion()} bridge, one TLS connection (one vended certificate), topic devices/# out 1, max_inflight_messages ${defaultBridgeSettings.maxInflight}, max_queued_messages ${defaultBridgeSettings.maxQueued}, persistence on (autosave every ${defaultBridgeSettings.autosaveIntervalS} s)`,
        gateway_config_override: stack.gatewayOverride,
        batched_pass: batchedPass ? { groups: { default: { batching: BATCHING } } } : 'none',
        held_bridge: heldPass
          ? 'the same bridge settings, its one connection to the sandbox data plane (mutual TLS, IoT Core policies) with IoT Core per-connection quotas: 100 publishes/s and 524288 bytes/s, the excess dropped without PUBACK; a fresh broker and fresh devices per run; read on the sandbox observer'
          : 'none (BENCH_HELD=0)',
      },
      figures,
      goals: GOALS,
      notes: [
        '`ratio` = simbridge_msgs_per_s / bridge_msgs_per_s for each pair of neighbouring runs (same devices count, window and payload), median over pairs.',
        batched
          ? `\`batched_readings_per_billed_unit\`: one more simbridge run with the group's batching policy set by a config override (\`${JSON.stringify(BATCHING)}\`): readings delivered upstream divided by 5 KB billing units (topic + payload of each upstream message). The collector finds every reading inside the batch envelope by its marker. \`simbridge_batched_*\` are that run's figures (e2e includes up to maxDelayMs of batching delay). The pairs and \`ratio\` are unbatched (\`immediate\`).`
          : userOverride
            ? '`batched_readings_per_billed_unit`: measured on the simbridge runs, which ran with the config override BENCH_GATEWAY_CONFIG (see params).'
            : '`batched_readings_per_billed_unit` is **null**: the measured simbridge has no batching policy (delivery is immediate, one upstream message per reading). With one, run `BENCH_GATEWAY_CONFIG=\'{"groups":{"default":{"batching":{...}}}}\' npm run bench -- bridge-compare`; the collector finds every reading inside a batched upstream message (by its marker) and counts 5 KB billing units, so the figure is then filled in.',
        '`*_readings_per_billed_unit` are the same measure for the unbatched paths (1.0: one reading per message, each under 5 KB).',
        'The bridge acknowledges a device as soon as the message is in memory (not durable); simbridge only after the commit (synchronous: full). The bridge sends all devices\' traffic as ONE identity: against real IoT Core that single connection would be throttled to 100 publishes/s (and loses per-device identity and policies), so the bridge figures here are an upper bound.',
        '`*_undelivered`: acknowledged to a device but not at the upstream when the wait ended (for the bridge: its queue overflowed or it fell behind).',
        '`*_cpu_us_per_msg`: CPU of the simbridge process and of the bridge Mosquitto process respectively, per delivered message.',
        ...(heldPass
          ? [
              '`held_bridge_*`: the same bridge (same Mosquitto settings, its own vended identity, same devices count, window and payload) whose one upstream connection goes to the sandbox\'s data plane, which enforces what IoT Core enforces per connection: 100 publishes and 512 KiB per second, the excess dropped without PUBACK (sandbox/data/plane.ts). Messages the sandbox accepted are read on its observer. One held run follows each simbridge/bridge pair; `ratio_at_iot_core_limits` = simbridge_msgs_per_s / held_bridge_msgs_per_s of the same triple, median over triples (simbridge enforces the same quota itself, per device session).',
              '`held_bridge_msgs_per_s` counts unique messages delivered from the first send to the last delivery or the end of sending, whichever is later (a stalled path is not credited with a short span). A bridge cannot pace: it forwards at the rate devices publish, the sandbox drops what exceeds the quota without PUBACK, and Mosquitto resends an unacknowledged message only after a reconnect, so each dropped message holds one of its `max_inflight_messages` slots until the window is full and forwarding stops. Delivery then stops for the rest of the connection while devices keep being acknowledged into the bridge\'s queue: `held_bridge_acked_undelivered` (acknowledged to devices, never delivered; sum over runs) is that loss. Because the held bridge delivers a roughly fixed number of messages per run, `held_bridge_msgs_per_s` falls (and the ratio rises) with the run length (`run_s`).',
              `The held bridge is waited for at most ${HELD_DRAIN_MS / 1000} s (or 8 s without any arrival) after sending ends; each held run starts a fresh broker with empty persistence and reconnects its devices, so runs do not inherit each other\'s stuck window. BENCH_HELD=0 leaves the held runs out.`,
            ]
          : []),
      ],
      extraMd: runTable([
        ...sim.map((r, i) => [`simbridge ${i + 1}`, r] as const),
        ...bri.map((r, i) => [`bridge ${i + 1}`, r] as const),
        ...held.map((r, i) => [`held bridge ${i + 1}`, r] as const),
        ...(batched ? [['simbridge batched', batched] as const] : []),
      ]),
    };
    const missed = GOALS.filter((g) => goalMet(g, figures) === false);
    if (ctx.profile === 'always' || (ctx.profile === 'auto' && missed.length)) {
      const out = await profileScenario(ctx, stack, {
        scenario: 'bridge-compare',
        kind: 'mqtt',
        devices: n,
        window,
        durationMs: knob('PROFILE_S', 10, 5, ctx) * 1000,
        payloadBytes: PAYLOAD_BYTES,
        why: missed.length ? missed.map((g) => `Goal missed: ${g.text} (\`${g.figure}\` = ${figures[g.figure]}).`) : ['Taken on request (BENCH_PROFILE=1).'],
      });
      result.notes!.push(`CPU profile of simbridge under this load: [${out.split('/').pop()}](${out.split('/').pop()}).`);
    }
    return result;
  } finally {
    await stack.close();
  }
}

export const scenario: Scenario = { title: 'simbridge side by side with a Mosquitto bridge, unthrottled and held to IoT Core\'s per-connection limits, same load', goals: GOALS, run: bridgeCompare };
