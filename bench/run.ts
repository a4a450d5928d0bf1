// npm run bench -- <scenario|all> [more scenarios]
// Environment: BENCH_QUICK=1 (about a minute per scenario), BENCH_PROFILE=0|1, BENCH_GATEWAY_REF=<git ref>,
// BENCH_GATEWAY_CONFIG=<json|file>, BENCH_OUTAGE_S, BENCH_WINDOW, BENCH_REPEATS, ... (see bench/README.md).
import { installCleanup } from './lib/cleanup.ts';
import type { Ctx, Scenario } from './lib/context.ts';
import { SCENARIOS, writeIndex, writeResult } from './lib/report.ts';
import { noiseMeter, noiseReport, waitForQuiet } from './lib/procstat.ts';
import { gatewaySource } from './lib/stack.ts';

installCleanup();

const scenarios: Record<(typeof SCENARIOS)[number], () => Promise<Scenario>> = {
  skeleton: async () => (await import('./scenarios/skeleton.ts')).skeleton,
  'throughput-mqtt': async () => (await import('./scenarios/throughput-mqtt.ts')).throughputMqtt,
  'bridge-compare': async () => (await import('./scenarios/bridge-compare.ts')).bridgeCompare,
  'throughput-http': async () => (await import('./scenarios/throughput-http.ts')).throughputHttp,
  faults: async () => (await import('./scenarios/faults.ts')).faults,
  'bad-input': async () => (await import('./scenarios/bad-input.ts')).badInput,
  lowpower: async () => (await import('./scenarios/lowpower.ts')).lowpower,
};

const usage = `usage: npm run bench -- <${[...SCENARIOS, 'all', 'index'].join('|')}> [...]
  BENCH_QUICK=1   short runs (smoke test, about a minute per scenario)
  BENCH_PROFILE=0 never profile; =1 always profile (default: profile simbridge when a goal is missed)`;

async function main(args: string[]): Promise<number> {
  if (args.length === 0 || args.includes('-h') || args.includes('--help')) {
    console.log(usage);
    return args.length ? 0 : 64;
  }
  if (args.includes('index')) {
    writeIndex();
    return 0;
  }
  const names = args.includes('all') ? [...SCENARIOS] : args;
  const unknown = names.filter((n) => !(n in scenarios));
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
  for (const name of names as Array<keyof typeof scenarios>) {
    ctx.log(`== ${name}`);
    const waitS = Number(process.env.BENCH_WAIT_QUIET_S ?? 0);
    const waited = waitS > 0 ? await waitForQuiet(waitS, Number(process.env.BENCH_QUIET_PCT ?? 30)) : 0;
    if (waited) ctx.log(`waited ${waited} s for the machine to quieten`);
    const t = Date.now();
    const noise = noiseMeter();
    try {
      const result = await (await scenarios[name]())(ctx);
      // How busy the (shared) machine was with other work while this scenario ran.
      const busy = noiseReport(noise.stop(), waited);
      result.params = { ...result.params, ...busy.params };
      result.notes = [...(result.notes ?? []), busy.note];
      writeResult(name, result);
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
