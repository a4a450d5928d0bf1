import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Ctx } from './context.ts';
import { devices, SIMBRIDGE_TOPIC } from './devices.ts';
import { LoadPool } from './load.ts';
import { measuredRun, newTag, warmUp } from './measure.ts';
import { mainThreadProfile, profileMarkdown, summarise } from './profile.ts';
import { resultsDir } from './report.ts';
import { gatewaySource, type Stack } from './stack.ts';
import { round } from './stats.ts';
import { tempDir } from '../../test/helpers/processes.ts';

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
