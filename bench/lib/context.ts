import type { Goal, ScenarioResult } from './report.ts';

export interface Ctx {
  /** BENCH_QUICK=1: shorter runs, one repetition, for smoke testing (about a minute per scenario). */
  quick: boolean;
  /** Take a CPU profile of simbridge when a goal is missed (BENCH_PROFILE=0 turns it off, =1 forces it). */
  profile: 'auto' | 'always' | 'never';
  log(msg: string): void;
}

/**
 * One benchmark scenario, run by `npm run bench -- <name>` (bench/run.ts) and listed by name in
 * bench/scenarios/index.ts. `run` starts what it needs, measures, stops everything it started and returns
 * its figures; the runner writes the report (bench/lib/report.ts#writeResult). See bench/README.md.
 */
export interface Scenario {
  /** One line: what it measures (the heading of its report). */
  title: string;
  /** What its figures are checked against, in its report and in results/README.md (a result may refine them). */
  goals?: Goal[];
  run(ctx: Ctx): Promise<ScenarioResult>;
}

/** A numeric knob from the environment (BENCH_<NAME>), else the quick or full default. */
export function knob(name: string, full: number, quick: number, ctx: Ctx): number {
  const v = process.env[`BENCH_${name}`];
  if (v !== undefined && v !== '' && Number.isFinite(Number(v))) return Number(v);
  return ctx.quick ? quick : full;
}

/** Same as knob() for a list of numbers, e.g. BENCH_WINDOWS=2,4,8. */
export function knobList(name: string, full: number[], quick: number[], ctx: Ctx): number[] {
  const v = process.env[`BENCH_${name}`];
  if (v) return v.split(',').map(Number).filter(Number.isFinite);
  return ctx.quick ? quick : full;
}
