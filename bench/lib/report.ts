import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Scenario } from './context.ts';
import { machine, type Machine } from './procstat.ts';

/**
 * bench/results (committed), or bench/results/quick for BENCH_QUICK=1 runs (git-ignored), so a smoke test
 * never overwrites the latest full results; BENCH_RESULTS_DIR overrides both.
 */
export const resultsDir =
  process.env.BENCH_RESULTS_DIR ?? fileURLToPath(new URL(process.env.BENCH_QUICK === '1' ? '../results/quick' : '../results', import.meta.url));

export type Figures = Record<string, number | null>;
export type Params = Record<string, unknown>;

export interface Goal {
  text: string;
  figure: string;
  op: '>=' | '<=' | '==';
  target: number;
}

export interface ScenarioResult {
  params: Params;
  figures: Figures;
  /** Goals as measured in this run (e.g. at a rate given by a knob); default: the scenario's. */
  goals?: Goal[];
  /** Sentences at the top of the markdown report: what the scenario does. */
  intro?: string[];
  /** Sentences for the markdown report (how it was measured, what is missing, caveats). */
  notes?: string[];
  /** Extra markdown appended to the scenario's report (e.g. a per-run table). */
  extraMd?: string;
}

export interface ResultFile {
  scenario: string;
  date: string;
  machine: Machine;
  params: Params;
  figures: Figures;
}

export function goalMet(goal: Goal, figures: Figures): boolean | null {
  const v = figures[goal.figure];
  if (v === null || v === undefined) return null;
  return goal.op === '>=' ? v >= goal.target : goal.op === '<=' ? v <= goal.target : v === goal.target;
}

const fmt = (v: unknown) => (v === null || v === undefined ? 'null' : typeof v === 'object' ? '`' + JSON.stringify(v) + '`' : String(v));

/** The markdown tables every result report has: figures, goals (met or missed), parameters. */
export const figuresMd = (figures: Figures) => ['| figure | value |', '|---|---:|', ...Object.entries(figures).map(([k, v]) => `| \`${k}\` | ${fmt(v)} |`)];
export const goalsMd = (goals: Goal[], figures: Figures) => [
  '| goal | figure | measured | met |',
  '|---|---|---:|:---:|',
  ...goals.map((g) => {
    const met = goalMet(g, figures);
    return `| ${g.text} | \`${g.figure}\` ${g.op} ${g.target} | ${fmt(figures[g.figure])} | ${met === null ? 'n/a' : met ? 'met' : '**missed**'} |`;
  }),
];
export const paramsMd = (params: Params) => ['| param | value |', '|---|---|', ...Object.entries(params).map(([k, v]) => `| \`${k}\` | ${fmt(v)} |`)];
export const machineLine = (date: string, m: ResultFile['machine']) => `${date} · ${m.cores} cores (${m.cpu_model}), ${m.memory_gb} GB, Node ${m.node}, Linux ${m.kernel}`;

/**
 * The one report writer: bench/results/<name>.json (design.md's format: scenario, date, machine, params,
 * flat figures) and <name>.md (title, intro, goals, figures, notes, extra tables, parameters).
 */
export function writeResult(name: string, scenario: Scenario, r: ScenarioResult, date = new Date()): ResultFile {
  mkdirSync(resultsDir, { recursive: true });
  if (resultsDir.endsWith('/quick') && !existsSync(join(resultsDir, '.gitignore'))) writeFileSync(join(resultsDir, '.gitignore'), '*\n');
  const file: ResultFile = { scenario: name, date: date.toISOString(), machine: machine(), params: r.params, figures: r.figures };
  writeFileSync(join(resultsDir, `${name}.json`), JSON.stringify(file, null, 2) + '\n');
  const goals = r.goals ?? scenario.goals ?? [];
  const busy = typeof r.params.machine_other_cpu_pct === 'number' ? ` · other processes used ${r.params.machine_other_cpu_pct} % of a core meanwhile` : '';
  const lines = [`# ${name}: ${scenario.title}`, '', machineLine(file.date, file.machine) + busy, ''];
  if (r.intro?.length) lines.push(...r.intro, '');
  if (goals.length) lines.push('## Goals', '', ...goalsMd(goals, r.figures), '');
  lines.push('## Figures', '', ...figuresMd(r.figures), '');
  if (r.notes?.length) lines.push('## Notes', '', ...r.notes.map((n) => `- ${n}`), '');
  if (r.extraMd) lines.push(r.extraMd.trimEnd(), '');
  lines.push('## Parameters', '', ...paramsMd(r.params), '');
  writeFileSync(join(resultsDir, `${name}.md`), lines.join('\n'));
  return file;
}

function profiles(): string[] {
  const files = readdirSync(resultsDir).filter((f) => /^profile-.+\.md$/.test(f)).sort();
  return files.length ? ['## CPU profiles (goals missed)', '', ...files.map((f) => `- [${f.replace(/\.md$/, '')}](${f})`), ''] : [];
}

/** bench/results/README.md, regenerated from the JSON files: one table over the latest result of every scenario, and the goals. */
export function writeIndex(scenarios: Record<string, Scenario>): void {
  const rows: string[] = [];
  const goals: string[] = [];
  let machineLine = '';
  for (const s of Object.keys(scenarios)) {
    const f = join(resultsDir, `${s}.json`);
    if (!existsSync(f)) {
      rows.push(`| [${s}](${s}.md) | (not run yet) | | | | |`);
      continue;
    }
    const r = JSON.parse(readFileSync(f, 'utf8')) as ResultFile;
    machineLine ||= `${r.machine.cores} cores, ${r.machine.memory_gb} GB, Node ${r.machine.node}`;
    const base = Object.keys(r.figures).filter((k) => !k.endsWith('_min') && !k.endsWith('_max'));
    base.forEach((k, i) => {
      const min = r.figures[`${k}_min`];
      const max = r.figures[`${k}_max`];
      rows.push(
        `| ${i === 0 ? `[${s}](${s}.md)` : ''} | ${i === 0 ? r.date.slice(0, 16).replace('T', ' ') + (r.params.quick ? ' (quick)' : '') + (typeof r.params.machine_other_cpu_pct === 'number' ? `; others used ${r.params.machine_other_cpu_pct} % CPU` : '') : ''} | \`${k}\` | ${fmt(r.figures[k])} | ${min === undefined ? '' : fmt(min)} | ${max === undefined ? '' : fmt(max)} |`,
      );
    });
    for (const g of scenarios[s]!.goals ?? []) {
      const met = goalMet(g, r.figures);
      goals.push(`| ${s} | ${g.text} | ${fmt(r.figures[g.figure])} | ${met === null ? 'n/a' : met ? 'met' : '**missed**'} |`);
    }
  }
  const md = [
    '# Benchmark results (latest)',
    '',
    'Generated by `npm run bench -- <scenario|all>` (see [bench/README.md](../README.md)); each scenario also has its own',
    'report (`<scenario>.md`) and machine-readable figures (`<scenario>.json`). Figures are medians over repeated runs',
    'with min and max where a scenario repeats; ratios are measured side by side in the same run.',
    machineLine
      ? `\nMachine: ${machineLine}. Everything (devices, simbridge, both Mosquittos, the collector) shares it, and so do other people's test runs: "others used N % CPU" is their average load while the scenario ran (100 % = one core).`
      : '',
    '',
    ...(existsSync(join(resultsDir, 'changes.md')) ? ['What was changed for performance, and what each change bought, measured back to back: [changes.md](changes.md).', ''] : []),
    '| scenario | date (UTC) | figure | median | min | max |',
    '|---|---|---|---:|---:|---:|',
    ...rows,
    '',
    '## Goals',
    '',
    '| scenario | goal | measured | |',
    '|---|---|---:|---|',
    ...goals,
    '',
    ...profiles(),
  ];
  writeFileSync(join(resultsDir, 'README.md'), md.join('\n'));
}
