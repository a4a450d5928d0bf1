// Result files of the standalone benchmarks (bench/sessions.ts, bench/sleepy.ts): the JSON format of
// design.md and a short markdown report with the goals. Unlike report.ts#writeResult it leaves
// bench/results/README.md alone (bench/run.ts owns that index; it lists these files under "Other
// benchmarks" when it is next rebuilt).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { machine } from './procstat.ts';
import { figuresMd, goalsMd, machineLine, paramsMd, resultsDir, type Figures, type Goal, type Params } from './report.ts';

export function writeStandalone(
  scenario: string,
  title: string,
  r: { params: Params; figures: Figures; goals: Goal[]; intro?: string[]; notes?: string[]; extraMd?: string },
): void {
  mkdirSync(resultsDir, { recursive: true });
  const file = { scenario, date: new Date().toISOString(), machine: machine(), params: r.params, figures: r.figures };
  writeFileSync(join(resultsDir, `${scenario}.json`), JSON.stringify(file, null, 2) + '\n');
  const lines = [
    `# ${title}`,
    '',
    `${machineLine(file.date, file.machine)} · other processes used ${r.params.machine_other_cpu_pct ?? 'null'} % of a core meanwhile`,
    '',
    ...(r.intro?.length ? [...r.intro, ''] : []),
    '## Goals',
    '',
    ...goalsMd(r.goals, r.figures),
    '',
    '## Figures',
    '',
    ...figuresMd(r.figures),
    '',
  ];
  if (r.notes?.length) lines.push('## Notes', '', ...r.notes.map((n) => `- ${n}`), '');
  if (r.extraMd) lines.push(r.extraMd.trimEnd(), '');
  lines.push('## Parameters', '', ...paramsMd(r.params), '');
  writeFileSync(join(resultsDir, `${scenario}.md`), lines.join('\n'));
}
