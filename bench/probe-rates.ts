import { readdirSync, readFileSync } from 'node:fs';
import { devices, SIMBRIDGE_TOPIC } from './lib/devices.ts';
import { LoadPool } from './lib/load.ts';
import { measuredRun, newTag, warmUp } from './lib/measure.ts';
import { Stack } from './lib/stack.ts';

function threads(pid: number): Map<string, number> {
  const m = new Map<string, number>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const s = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const name = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'));
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      const key = `${name}#${t}`;
      m.set(key, (Number(f[11]) + Number(f[12])) / 100);
    } catch {}
  }
  return m;
}
function diff(a: Map<string, number>, b: Map<string, number>, secs: number) {
  const byName = new Map<string, number>();
  for (const [k, v] of b) { const d = v - (a.get(k) ?? 0); const n = k.split('#')[1] === String(gwPid) ? 'main' : k.split('#')[0]; byName.set(n, (byName.get(n) ?? 0) + d); }
  return [...byName].filter(([, v]) => v > 0).sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k}=${(100 * v / secs).toFixed(1)}%`).join(' ');
}
const kind = (process.env.KIND ?? 'mqtt') as 'mqtt' | 'http';
const n = Number(process.env.N ?? 1000);
const rates = (process.env.RATES ?? '0,500,1000,2000,3500').split(',').map(Number);
let gwPid = 0;
const stack = await Stack.start();
try {
  const gw = await stack.startGateway();
  gwPid = gw.pid;
  console.log('pid', gw.pid);
  const specs = devices(n, 1, SIMBRIDGE_TOPIC);
  const load = await LoadPool.start({ kind, host: '127.0.0.1', port: kind === 'mqtt' ? gw.mqttPort : gw.httpPort }, specs, { workers: 2 });
  await warmUp(stack.collector, load, n);
  console.log('warm');
  await new Promise((r) => setTimeout(r, 5000));
  for (const rate of rates) {
    const t0 = threads(gw.pid); const w0 = Date.now();
    if (rate === 0) {
      await new Promise((r) => setTimeout(r, 8000));
      const secs = (Date.now() - w0) / 1000;
      console.log(`rate 0 idle: ${diff(t0, threads(gw.pid), secs)}`);
      continue;
    }
    const f = await measuredRun(stack.collector, load, { tag: newTag('p'), mode: 'paced', window: 100, ratePerS: rate, durationMs: 8000, payloadBytes: 200, pid: gw.pid });
    const secs = (Date.now() - w0) / 1000;
    console.log(`rate ${rate}: delivered ${f.msgs_per_s.toFixed(0)}/s cpu ${f.cpu_pct?.toFixed(1)}% ${f.cpu_us_per_msg?.toFixed(1)} us/msg ack p50/p99 ${f.ack_p50_ms}/${f.ack_p99_ms}  threads: ${diff(t0, threads(gw.pid), secs)}`);
  }
  await load.close();
} finally {
  await stack.close();
}
