import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import { devices, SIMBRIDGE_TOPIC } from '../lib/devices.ts';
import { LoadPool } from '../lib/load.ts';
import { measuredRun, newTag, warmUp, type RunFigures } from '../lib/measure.ts';
import { IDLE_BASELINE_AFTER_MS, idleRss, settledRss } from '../lib/memory.ts';
import type { ScenarioResult } from '../lib/report.ts';
import { gatewaySource, Stack } from '../lib/stack.ts';
import { putSummary, round } from '../lib/stats.ts';

/**
 * Scenario 0: 100 MQTT devices, QoS 1, the whole path. Each repetition starts a fresh simbridge:
 * RSS when idle, then after every device is connected and has a warm upstream session (its first
 * message vended it and opened the session), then a closed-loop run for msgs_per_s.
 */
export async function skeleton(ctx: Ctx): Promise<ScenarioResult> {
  const n = knob('DEVICES', 100, 100, ctx);
  const repeats = knob('REPEATS', 3, 1, ctx);
  const durationMs = knob('DURATION_S', 5, 4, ctx) * 1000;
  const window = knob('WINDOW', 4, 4, ctx);
  const perDevice: Array<number | null> = [];
  const idle: Array<number | null> = [];
  const runs: RunFigures[] = [];
  const stack = await Stack.start();
  try {
    for (let i = 0; i < repeats; i++) {
      const startedAt = Date.now();
      const gw = await stack.startGateway({ fresh: true });
      const before = await idleRss(gw.pid, startedAt);
      const specs = devices(n, 1, SIMBRIDGE_TOPIC);
      const load = await LoadPool.start({ kind: 'mqtt', host: '127.0.0.1', port: gw.mqttPort }, specs, { workers: 2 });
      try {
        await warmUp(stack.collector, load, n);
        const after = await settledRss(gw.pid, 500, 10);
        idle.push(before === null ? null : before / 1024);
        perDevice.push(before !== null && after !== null ? (after - before) / n : null);
        const f = await measuredRun(stack.collector, load, { tag: newTag('k'), mode: 'closed', window, durationMs, payloadBytes: 200, pid: gw.pid });
        runs.push(f);
        ctx.log(`  run ${i + 1}/${repeats}: RSS ${round(before! / 1024)} → ${round(after! / 1024)} MB (${round(perDevice.at(-1)!)} KB/device), ${round(f.msgs_per_s)} msgs/s`);
      } finally {
        await load.close();
      }
      await stack.stopGateway('SIGTERM');
    }
  } finally {
    await stack.close();
  }
  const figures: Record<string, number | null> = {};
  putSummary(figures, 'msgs_per_s', runs.map((r) => r.msgs_per_s));
  putSummary(figures, 'rss_per_device_kb', perDevice);
  putSummary(figures, 'rss_idle_mb', idle);
  putSummary(figures, 'ack_p99_ms', runs.map((r) => r.ack_p99_ms));
  figures.undelivered = runs.reduce((a, r) => a + r.undelivered, 0);
  return {
    params: {
      quick: ctx.quick,
      gateway_commit: gatewaySource().commit,
      devices: n,
      qos: 1,
      payload_bytes: 200,
      window_per_device: window,
      run_s: durationMs / 1000,
      repeats,
      storage_synchronous: 'full',
    },
    figures,
    notes: [
      '`rss_per_device_kb`: simbridge VmRSS (/proc/<pid>/status) once settled after all devices are connected, vended and have delivered one message each (a warm upstream session per device), minus VmRSS of the idle gateway, divided by the number of devices. It includes each device\'s aedes client, socket buffers, aws-crt session (native) and credentials. The idle reading is taken ' + IDLE_BASELINE_AFTER_MS / 1000 + ' s after start, once V8 has shrunk the heaps of the freshly started process (its memory reducer, about 8 s after start: an idle sandbox gateway went from 241 to 162 MB); earlier runs read it before that, and their figures are too small (negative in runs of 2026-11-22, once the worker threads booted before the ports opened; before that the outbox writer thread\'s start, after the idle reading, made up for it). At 100 devices the figure is mostly the working set a busy gateway grows back (its threads\' heaps, SQLite\'s page cache), not a cost of each device: the sessions scenario measures that with 10,000 idle devices and 1,000 warm sessions.',
      '`msgs_per_s`: unique messages arriving at the upstream Mosquitto per second, first send to last arrival, every device keeping `window_per_device` QoS 1 messages in flight.',
      'Each repetition starts a fresh gateway with an empty data directory, so every run vends its devices again.',
    ],
  };
}

export const scenario: Scenario = { title: '100 MQTT devices through the whole path: RSS per device and msgs/s', run: skeleton };
