/** Numbered parameters ($1, $2, …) for a query built from optional parts. */
export class Params {
  readonly values: unknown[] = [];

  /** Adds a value; returns its placeholder. */
  add(value: unknown): string {
    this.values.push(value);
    return `$${this.values.length}`;
  }
}

/** The number of rows a statement changed (0 when the driver reports none). */
export const changed = (r: { rowCount: number | null }): number => r.rowCount ?? 0;
