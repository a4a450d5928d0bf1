// A diagnostic, not a scenario: CPU per message and per thread of the gateway at fixed offered rates,
// for A/B comparisons that need more runs than a scenario makes (bench/results/changes.md).
//
//   node --import tsx bench/probe-rates.ts
//
// KIND=mqtt|http (devices' protocol, default mqtt), N (devices, default 1000), RATES (comma-separated
// msgs/s offered, paced, 8 s each; 0 = idle for 8 s; default 0,500,1000,2000,3500), BYTID=1 (threads
// by id rather than by name). BENCH_GATEWAY_REF and BENCH_GATEWAY_NODE_ARGS apply as in every scenario.
import { devices, SIMBRIDGE_TOPIC } from './lib/devices.ts';
import { LoadPool } from './lib/load.ts';
import { measuredRun, newTag, warmUp } from './lib/measure.ts';
import { threadCpuSeconds } from './lib/procstat.ts';
import { Stack } from './lib/stack.ts';

/** Share of a core each thread (or thread name) used between two readings; the main thread as "main". */
function threadShares(pid: number, a: Map<string, number>, b: Map<string, number>, secs: number): string {
  const byName = new Map<string, number>();
  for (const [k, v] of b) {
    const [name, tid] = k.split('#') as [string, string];
    const key = tid === String(pid) ? 'main' : process.env.BYTID ? k : name;
    byName.set(key, (byName.get(key) ?? 0) + v - (a.get(k) ?? 0));
  }
  return [...byName]
    .filter(([, v]) => v > 0)
    .sort((x, y) => y[1] - x[1])
    .map(([k, v]) => `${k}=${((100 * v) / secs).toFixed(1)}%`)
    .join(' ');
}

const kind = (process.env.KIND ?? 'mqtt') as 'mqtt' | 'http';
const n = Number(process.env.N ?? 1000);
const rates = (process.env.RATES ?? '0,500,1000,2000,3500').split(',').map(Number);
const stack = await Stack.start();
try {
  const gw = await stack.startGateway();
  console.log('pid', gw.pid);
  const load = await LoadPool.start({ kind, host: '127.0.0.1', port: kind === 'mqtt' ? gw.mqttPort : gw.httpPort }, devices(n, 1, SIMBRIDGE_TOPIC), { workers: 2 });
  await warmUp(stack.collector, load, n);
  console.log('warm');
  await new Promise((r) => setTimeout(r, 5000));
  for (const rate of rates) {
    const before = threadCpuSeconds(gw.pid);
    const started = Date.now();
    if (rate === 0) {
      await new Promise((r) => setTimeout(r, 8000));
      console.log(`rate 0 idle: ${threadShares(gw.pid, before, threadCpuSeconds(gw.pid), (Date.now() - started) / 1000)}`);
      continue;
    }
    const f = await measuredRun(stack.collector, load, { tag: newTag('p'), mode: 'paced', window: 100, ratePerS: rate, durationMs: 8000, payloadBytes: 200, pid: gw.pid });
    const shares = threadShares(gw.pid, before, threadCpuSeconds(gw.pid), (Date.now() - started) / 1000);
    console.log(`rate ${rate}: delivered ${f.msgs_per_s.toFixed(0)}/s cpu ${f.cpu_pct?.toFixed(1)}% ${f.cpu_us_per_msg?.toFixed(1)} us/msg ack p50/p99 ${f.ack_p50_ms}/${f.ack_p99_ms}  threads: ${shares}`);
  }
  await load.close();
} finally {
  await stack.close();
}
