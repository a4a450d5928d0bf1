/** Median, min and max of repeated runs; nulls (a figure a run could not measure) are left out. */
export function summary(values: Array<number | null | undefined>): { median: number | null; min: number | null; max: number | null } {
  const v = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return { median: null, min: null, max: null };
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
  return { median, min: v[0], max: v[v.length - 1] };
}

/** Rounds for reports: 3 significant decimals below 10, 1 below 1000, none above. */
export function round(x: number | null): number | null {
  if (x === null || !Number.isFinite(x)) return null;
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x);
  if (a >= 10) return Math.round(x * 10) / 10;
  return Math.round(x * 1000) / 1000;
}

/** Rounds to a fixed number of decimals (a figure whose precision the scenario chooses). */
export const roundTo = (v: number, digits = 3): number => Math.round(v * 10 ** digits) / 10 ** digits;

/**
 * Adds `name`, `name_min`, `name_max` (medians over runs, rounded) to figures.
 * With one run only the plain name is written.
 */
export function putSummary(figures: Record<string, number | null>, name: string, values: Array<number | null | undefined>): void {
  const s = summary(values);
  figures[name] = round(s.median);
  if (values.length > 1) {
    figures[`${name}_min`] = round(s.min);
    figures[`${name}_max`] = round(s.max);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
