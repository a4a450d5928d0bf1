import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
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
  goals?: Goal[];
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

/** Writes bench/results/<scenario>.json and .md and refreshes bench/results/README.md. */
export function writeResult(scenario: string, r: ScenarioResult, date = new Date()): ResultFile {
  mkdirSync(resultsDir, { recursive: true });
  if (resultsDir.endsWith('/quick') && !existsSync(join(resultsDir, '.gitignore'))) writeFileSync(join(resultsDir, '.gitignore'), '*\n');
  const file: ResultFile = { scenario, date: date.toISOString(), machine: machine(), params: r.params, figures: r.figures };
  writeFileSync(join(resultsDir, `${scenario}.json`), JSON.stringify(file, null, 2) + '\n');
  const lines = [`# ${scenario}`, '', machineLine(file.date, file.machine), '', '## Figures', '', ...figuresMd(r.figures), ''];
  if (r.goals?.length) lines.push('## Goals', '', ...goalsMd(r.goals, r.figures), '');
  if (r.notes?.length) lines.push('## Notes', '', ...r.notes.map((n) => `- ${n}`), '');
  if (r.extraMd) lines.push(r.extraMd.trimEnd(), '');
  lines.push('## Parameters', '', ...paramsMd(r.params), '');
  writeFileSync(join(resultsDir, `${scenario}.md`), lines.join('\n'));
  writeIndex();
  return file;
}

export const SCENARIOS = ['skeleton', 'throughput-mqtt', 'bridge-compare', 'throughput-http', 'faults', 'bad-input', 'lowpower'] as const;

export const GOALS: Record<string, Goal[]> = {
  'throughput-mqtt': [
    { text: '≥ 15,000 msgs/s with durable acks (synchronous: full)', figure: 'msgs_per_s', op: '>=', target: 15000 },
    { text: 'ack p99 ≤ 10 ms at half the goal rate (7,500 msgs/s)', figure: 'ack_p99_ms_at_7500_per_s', op: '<=', target: 10 },
    { text: 'ack p99 ≤ 10 ms at half the saturated rate', figure: 'ack_p99_ms_at_half_rate', op: '<=', target: 10 },
  ],
  'bridge-compare': [{ text: 'simbridge / Mosquitto bridge throughput ≥ 0.5', figure: 'ratio', op: '>=', target: 0.5 }],
  faults: [
    { text: 'no acknowledged message lost when simbridge is SIGKILLed', figure: 'simbridge_lost_on_kill', op: '==', target: 0 },
    { text: 'no acknowledged message lost in an upstream outage', figure: 'simbridge_lost_on_outage', op: '==', target: 0 },
  ],
  lowpower: [
    { text: 'CoAP CON wake ≤ 0.35 × the bytes of an MQTT 3.1.1 wake', figure: 'coap_vs_mqtt_bytes_ratio', op: '<=', target: 0.35 },
    { text: 'CoAP ack p99 ≤ 10 ms at 2,000 requests/s offered (synchronous: full)', figure: 'coap_ack_p99_ms', op: '<=', target: 10 },
    { text: 'no acknowledged CoAP request lost when simbridge is SIGKILLed', figure: 'coap_lost_on_kill', op: '==', target: 0 },
  ],
  'bad-input': [
    { text: 'the gateway survives every round', figure: 'crashes', op: '==', target: 0 },
    { text: 'the well-behaved device loses nothing', figure: 'well_behaved_lost', op: '==', target: 0 },
  ],
};

function profiles(): string[] {
  const files = readdirSync(resultsDir).filter((f) => /^profile-.+\.md$/.test(f)).sort();
  return files.length ? ['## CPU profiles (goals missed)', '', ...files.map((f) => `- [${f.replace(/\.md$/, '')}](${f})`), ''] : [];
}

/** Results other benchmarks (not run by bench/run.ts) keep in this folder. */
function others(): string[] {
  const mine = new Set<string>([...SCENARIOS, 'README']);
  const files = readdirSync(resultsDir, { withFileTypes: true })
    .filter((f) => f.isFile() && f.name.endsWith('.md') && !f.name.startsWith('profile-') && !mine.has(f.name.replace(/\.md$/, '')))
    .map((f) => f.name)
    .sort();
  return files.length ? ['## Other benchmarks in this folder', '', ...files.map((f) => `- [${f.replace(/\.md$/, '')}](${f})`), ''] : [];
}

/** bench/results/README.md: one table over the latest result of every scenario, and the goals. */
export function writeIndex(): void {
  const rows: string[] = [];
  const goals: string[] = [];
  let machineLine = '';
  for (const s of SCENARIOS) {
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
    for (const g of GOALS[s] ?? []) {
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
    ...others(),
  ];
  writeFileSync(join(resultsDir, 'README.md'), md.join('\n'));
}
