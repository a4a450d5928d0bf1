// npm run bench -- <scenario|all> [more scenarios] | index | cpuprofile FILE [root] [top]
// Environment: BENCH_QUICK=1 (about a minute per scenario), BENCH_PROFILE=0|1, BENCH_GATEWAY_REF=<git ref>,
// BENCH_GATEWAY_CONFIG=<json|file>, BENCH_OUTAGE_S, BENCH_WINDOW, BENCH_REPEATS, ... (see bench/README.md).
import type { Ctx } from './lib/context.ts';
import { profileMarkdown, summarise } from './lib/profile.ts';
import { writeIndex, writeResult } from './lib/report.ts';
import { noiseMeter, noiseReport, waitForQuiet } from './lib/procstat.ts';
import { gatewaySource } from './lib/stack.ts';
import { SCENARIOS } from './scenarios/index.ts';

// Every process a scenario starts is tracked by the shared harness and killed when the bench exits
// (test/helpers/processes.ts#track): exit on Ctrl-C or SIGTERM too.
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));

const usage = `usage: npm run bench -- <${[...Object.keys(SCENARIOS), 'all'].join('|')}> [...]
       npm run bench -- index                          rebuild bench/results/README.md from the JSON files
       npm run bench -- cpuprofile FILE [root] [top]   summarise any .cpuprofile (node --cpu-prof) as markdown
  BENCH_QUICK=1   short runs (smoke test, about a minute per scenario)
  BENCH_PROFILE=0 never profile; =1 always profile (default: profile simbridge when a goal is missed)`;

async function main(args: string[]): Promise<number> {
  if (args.length === 0 || args.includes('-h') || args.includes('--help')) {
    console.log(usage);
    return args.length ? 0 : 64;
  }
  if (args[0] === 'index') {
    writeIndex(SCENARIOS);
    return 0;
  }
  if (args[0] === 'cpuprofile') {
    const [file, root = process.cwd(), top = '25'] = args.slice(1);
    if (!file) return (console.error(usage), 64);
    console.log(profileMarkdown(summarise(file, root), Number(top)));
    return 0;
  }
  const names = args.includes('all') ? Object.keys(SCENARIOS) : args;
  const unknown = names.filter((n) => !(n in SCENARIOS));
  if (unknown.length) {
    console.error(`unknown scenario: ${unknown.join(', ')}\n${usage}`);
    return 64;
  }
  const started = Date.now();
  const stamp = () => `[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s]`;
  const ctx: Ctx = {
    quick: process.env.BENCH_QUICK === '1',
    profile: process.env.BENCH_PROFILE === '0' ? 'never' : process.env.BENCH_PROFILE === '1' ? 'always' : 'auto',
    log: (msg) => console.log(`${stamp()} ${msg}`),
  };
  ctx.log(`simbridge ${gatewaySource().commit} from ${gatewaySource().root}${ctx.quick ? ' (quick mode)' : ''}`);
  let failed = 0;
  for (const name of names) {
    const scenario = SCENARIOS[name]!;
    ctx.log(`== ${name}: ${scenario.title}`);
    const waitS = Number(process.env.BENCH_WAIT_QUIET_S ?? 0);
    const waited = waitS > 0 ? await waitForQuiet(waitS, Number(process.env.BENCH_QUIET_PCT ?? 30)) : 0;
    if (waited) ctx.log(`waited ${waited} s for the machine to quieten`);
    const t = Date.now();
    const noise = noiseMeter();
    try {
      const result = await scenario.run(ctx);
      // How busy the (shared) machine was with other work while this scenario ran.
      const busy = noiseReport(noise.stop(), waited);
      result.params = { ...result.params, ...busy.params };
      result.notes = [...(result.notes ?? []), busy.note];
      writeResult(name, scenario, result);
      writeIndex(SCENARIOS);
      ctx.log(`== ${name} done in ${((Date.now() - t) / 1000).toFixed(0)} s: ${JSON.stringify(result.figures)}`);
    } catch (err) {
      failed++;
      ctx.log(`== ${name} FAILED: ${(err as Error).stack ?? err}`);
    }
  }
  ctx.log(`finished: ${names.length - failed}/${names.length} scenarios; results in bench/results/`);
  return failed ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
