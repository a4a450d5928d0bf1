// Result files of the standalone benchmarks (bench/sessions.ts, bench/sleepy.ts): the JSON format of
// design.md and a short markdown report with the goals. Unlike report.ts#writeResult it leaves
// bench/results/README.md alone (bench/run.ts owns that index; it lists these files under "Other
// benchmarks" when it is next rebuilt).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { machine } from './procstat.ts';
import { goalMet, resultsDir, type Figures, type Goal, type Params } from './report.ts';

const fmt = (v: unknown) => (v === null || v === undefined ? 'null' : typeof v === 'object' ? '`' + JSON.stringify(v) + '`' : String(v));

export function writeStandalone(
  scenario: string,
  title: string,
  r: { params: Params; figures: Figures; goals: Goal[]; intro?: string[]; notes?: string[]; extraMd?: string },
): void {
  mkdirSync(resultsDir, { recursive: true });
  const file = { scenario, date: new Date().toISOString(), machine: machine(), params: r.params, figures: r.figures };
  writeFileSync(join(resultsDir, `${scenario}.json`), JSON.stringify(file, null, 2) + '\n');
  const m = file.machine;
  const lines = [
    `# ${title}`,
    '',
    `${file.date} · ${m.cores} cores (${m.cpu_model}), ${m.memory_gb} GB, Node ${m.node}, Linux ${m.kernel} · other processes used ${fmt(r.params.machine_other_cpu_pct)} % of a core meanwhile`,
    '',
    ...(r.intro?.length ? [...r.intro, ''] : []),
    '## Goals',
    '',
    '| goal | figure | measured | met |',
    '|---|---|---:|:---:|',
    ...r.goals.map((g) => {
      const met = goalMet(g, r.figures);
      return `| ${g.text} | \`${g.figure}\` ${g.op} ${g.target} | ${fmt(r.figures[g.figure])} | ${met === null ? 'n/a' : met ? 'met' : '**missed**'} |`;
    }),
    '',
    '## Figures',
    '',
    '| figure | value |',
    '|---|---:|',
    ...Object.entries(r.figures).map(([k, v]) => `| \`${k}\` | ${fmt(v)} |`),
    '',
  ];
  if (r.notes?.length) lines.push('## Notes', '', ...r.notes.map((n) => `- ${n}`), '');
  if (r.extraMd) lines.push(r.extraMd.trimEnd(), '');
  lines.push('## Parameters', '', '| param | value |', '|---|---|', ...Object.entries(r.params).map(([k, v]) => `| \`${k}\` | ${fmt(v)} |`), '');
  writeFileSync(join(resultsDir, `${scenario}.md`), lines.join('\n'));
}
