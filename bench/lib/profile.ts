import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { tempDir } from '../../test/helpers/processes.ts';
import type { Ctx } from './context.ts';
import { devices, SIMBRIDGE_TOPIC } from './devices.ts';
import { LoadPool } from './load.ts';
import { measuredRun, newTag, warmUp } from './measure.ts';
import { resultsDir } from './report.ts';
import { gatewaySource, type Stack } from './stack.ts';
import { round } from './stats.ts';

// CPU profiles of simbridge: takes one under a scenario's load (node --cpu-prof), reads the V8
// .cpuprofile and aggregates self time by function + file and by package / source area, for
// bench/results/profile-<scenario>.md (and `npm run bench -- cpuprofile FILE` for any profile).

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  /** key = `${fn}@${where}`; callers = the calling frames' self time attribution, largest first. */
  byFunction: Array<{ fn: string; where: string; selfMs: number; callers: Array<{ caller: string; ms: number }> }>;
  byArea: Array<{ area: string; selfMs: number }>;
}

function shortUrl(url: string, root: string): string {
  if (!url) return '';
  const path = url.startsWith('file://') ? decodeURIComponent(url.slice(7)) : url;
  const nm = path.lastIndexOf('/node_modules/');
  if (nm >= 0) return path.slice(nm + 1);
  if (path.startsWith('/')) return relative(root, path);
  return path;
}

/** Package (node_modules/<pkg>), gateway folder (bridge/, storage/...), node internals, or a V8 pseudo-frame. */
function area(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native / V8 builtins)';
  const nm = url.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/);
  if (nm) return nm[1];
  if (url.startsWith('node:')) return 'node: internals';
  const top = url.split('/')[0];
  return top.endsWith('.ts') || top.endsWith('.js') ? url : `${top}/`;
}

/**
 * `window`: only samples taken between these many ms before the end of the profile (the process's
 * exit), e.g. the measured run without start-up, module loading, vending and warm-up.
 */
export function summarise(file: string, root: string, window?: { fromEndMs: number; toEndMs: number }): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let t = p.startTime;
  const times = p.timeDeltas.map((d) => (t += d));
  const lo = window ? p.endTime - window.fromEndMs * 1000 : -Infinity;
  const hi = window ? p.endTime - window.toEndMs * 1000 : Infinity;
  for (let i = 0; i < p.samples.length; i++) {
    if (times[i] < lo || times[i] > hi) continue;
    // A sample's weight is the time until the next one.
    const w = (times[i + 1] ?? p.endTime) - times[i];
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + w);
  }
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const label = (n: ProfileNode) => {
    const url = shortUrl(n.callFrame.url, root);
    return `${n.callFrame.functionName || '(anonymous)'}${url ? ` (${url.endsWith('.ts') ? url : `${url}:${n.callFrame.lineNumber + 1}`})` : ''}`;
  };
  const fns = new Map<string, { fn: string; where: string; selfMs: number; callerMap: Map<string, number> }>();
  const areas = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const ms = us / 1000;
    total += ms;
    const fn = n.callFrame.functionName || '(anonymous)';
    if (fn === '(idle)') {
      idle += ms;
      continue;
    }
    const url = shortUrl(n.callFrame.url, root);
    // tsx strips whitespace from what it compiles, so a .ts file's functions all sit on "line 1": name the file only.
    const where = !url ? '' : url.endsWith('.ts') ? url : `${url}:${n.callFrame.lineNumber + 1}`;
    const key = `${fn}@${where}`;
    const e = fns.get(key) ?? { fn, where, selfMs: 0, callerMap: new Map<string, number>() };
    e.selfMs += ms;
    // The nearest caller that is a different function (skips recursion and same-name wrappers).
    let up = parent.get(id);
    while (up !== undefined && byId.get(up)!.callFrame.functionName === n.callFrame.functionName && byId.get(up)!.callFrame.url === n.callFrame.url) up = parent.get(up);
    const caller = up === undefined ? '(root)' : label(byId.get(up)!);
    e.callerMap.set(caller, (e.callerMap.get(caller) ?? 0) + ms);
    fns.set(key, e);
    const a = area(url, fn);
    areas.set(a, (areas.get(a) ?? 0) + ms);
  }
  return {
    totalMs: total,
    idleMs: idle,
    byFunction: [...fns.values()]
      .map(({ callerMap, ...f }) => ({ ...f, callers: [...callerMap.entries()].map(([caller, ms]) => ({ caller, ms })).sort((a, b) => b.ms - a.ms) }))
      .sort((a, b) => b.selfMs - a.selfMs),
    byArea: [...areas.entries()].map(([area, selfMs]) => ({ area, selfMs })).sort((a, b) => b.selfMs - a.selfMs),
  };
}

/**
 * The main thread's profile: files are CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile and the main
 * thread is 0 (tsx's module-loader hooks run in a worker thread that writes its own profile).
 */
export function mainThreadProfile(dir: string): string | undefined {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  const main = files.filter((f) => f.split('.').at(-3) === '0').sort();
  const pick = main.length ? main : files.sort();
  return pick.length ? join(dir, pick[pick.length - 1]) : undefined;
}

export function profileMarkdown(s: ProfileSummary, top = 25): string {
  const busy = s.totalMs - s.idleMs;
  const pct = (ms: number) => ((100 * ms) / Math.max(1, busy)).toFixed(1);
  return [
    `Sampled ${(s.totalMs / 1000).toFixed(1)} s of the main thread: busy ${(busy / 1000).toFixed(1)} s (${((100 * busy) / Math.max(1, s.totalMs)).toFixed(0)} %), idle ${(s.idleMs / 1000).toFixed(1)} s. Percentages are of busy time.`,
    '',
    '### Top functions by self time',
    '',
    '| # | self ms | % busy | function | where |',
    '|---:|---:|---:|---|---|',
    ...s.byFunction.slice(0, top).map((f, i) => `| ${i + 1} | ${f.selfMs.toFixed(0)} | ${pct(f.selfMs)} | \`${f.fn}\` | ${f.where ? `\`${f.where}\`` : ''} |`),
    '',
    '### Who calls the top functions',
    '',
    'Self time of each of the top functions split by its calling function (largest callers, ≥ 5 % of that function).',
    '',
    ...s.byFunction.slice(0, 8).flatMap((f) => {
      const callers = f.callers.filter((c) => c.ms >= f.selfMs * 0.05).slice(0, 4);
      return [`- \`${f.fn}\` (${f.selfMs.toFixed(0)} ms): ${callers.map((c) => `\`${c.caller}\` ${c.ms.toFixed(0)} ms`).join('; ')}`];
    }),
    '',
    '### Self time by package / source area',
    '',
    '| self ms | % busy | area |',
    '|---:|---:|---|',
    ...s.byArea.slice(0, 15).map((a) => `| ${a.selfMs.toFixed(0)} | ${pct(a.selfMs)} | \`${a.area}\` |`),
    '',
  ].join('\n');
}

/**
 * Restarts simbridge under `node --cpu-prof`, drives the scenario's load at it for a while, stops it
 * (SIGTERM: the profile is written at exit), and writes bench/results/profile-<scenario>.md with the
 * top self-time functions. `analysis` is the reading of it (what in the gateway would fix it).
 */
export async function profileScenario(
  ctx: Ctx,
  stack: Stack,
  opts: { scenario: string; kind: 'mqtt' | 'http'; devices: number; window: number; durationMs: number; payloadBytes: number; why: string[]; analysis?: string[] },
): Promise<string> {
  const dir = tempDir('cpuprof');
  mkdirSync(dir, { recursive: true });
  ctx.log(`profiling simbridge (${opts.scenario}): ${opts.durationMs / 1000} s under node --cpu-prof`);
  await stack.stopGateway('SIGTERM');
  const gw = await stack.startGateway({ cpuProfDir: dir });
  const specs = devices(opts.devices, 1, SIMBRIDGE_TOPIC);
  const load = await LoadPool.start({ kind: opts.kind, host: '127.0.0.1', port: opts.kind === 'mqtt' ? gw.mqttPort : gw.httpPort }, specs, { workers: 2 });
  let figures;
  let runStart = 0;
  let runEnd = 0;
  try {
    await warmUp(stack.collector, load, opts.devices);
    runStart = Date.now();
    figures = await measuredRun(stack.collector, load, {
      tag: newTag('p'),
      mode: 'closed',
      window: opts.window,
      durationMs: opts.durationMs,
      payloadBytes: opts.payloadBytes,
      pid: gw.pid,
    });
    runEnd = Date.now();
  } finally {
    await load.close();
  }
  await stack.stopGateway('SIGTERM');
  const exitAt = Date.now();
  const file = mainThreadProfile(dir);
  const md = [
    `# CPU profile: ${opts.scenario}`,
    '',
    `${new Date().toISOString()} · simbridge ${gatewaySource().commit} · \`node --cpu-prof --import tsx bin/simbridge.ts start --config …\``,
    '',
    ...opts.why.map((w) => `- ${w}`),
    `- Profiled run: ${opts.devices} ${opts.kind.toUpperCase()} devices, closed loop, ${opts.window} in flight each, ${opts.durationMs / 1000} s, ${opts.payloadBytes}-byte payloads:` +
      ` ${round(figures.msgs_per_s)} msgs/s, ${round(figures.cpu_us_per_msg)} µs CPU per message (all threads, /proc), ack p99 ${round(figures.ack_p99_ms)} ms.` +
      ' The profiler adds some overhead; the V8 profile covers the main JavaScript thread only (aws-crt\'s native event-loop threads and the libuv pool are not in it).',
    '',
  ];
  if (file) {
    md.push(
      'Only the samples of the measured run are counted (start-up, module loading, vending and warm-up are left out).',
      '',
      profileMarkdown(summarise(file, gatewaySource().root, { fromEndMs: exitAt - runStart, toEndMs: exitAt - runEnd })),
    );
    md.push(`Raw profile: \`${basename(file)}\`, in a temporary directory of the run (not committed; open it in Chrome DevTools or speedscope).`, '');
  } else md.push('**No profile was written** (simbridge did not exit cleanly).', '');
  mkdirSync(resultsDir, { recursive: true });
  const out = join(resultsDir, `profile-${opts.scenario}.md`);
  // The hand-written reading of a profile (what in the gateway would fix it) survives regeneration.
  const previous = existsSync(out) ? readFileSync(out, 'utf8') : '';
  const reading = previous.indexOf('\n## Reading');
  if (opts.analysis?.length) md.push('## Reading', '', ...opts.analysis, '');
  else if (reading >= 0) md.push(previous.slice(reading + 1).trimEnd(), '');
  writeFileSync(out, md.join('\n'));
  return out;
}
