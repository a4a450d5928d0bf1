import type { Readable } from 'node:stream';
import { parse, type CsvError } from 'csv-parse';
import { isIccid, isImsi, normaliseImei, type ImeiProblem } from '../lib/ids.ts';
import type { ImportOutcome, SimImportRow, SimRegistry } from '../storage/sims.ts';
import { TAG_KEY_PATTERN } from './schemas.ts';

export const CSV_COLUMNS = ['imsi', 'iccid', 'msisdn', 'group', 'imei', 'tags'] as const;
type Column = (typeof CSV_COLUMNS)[number];

export interface RowError {
  /** Line in the file (1 = the header). */
  line: number;
  imsi?: string;
  field?: string;
  message: string;
}

export interface ImportReport {
  rows: number;
  created: number;
  updated: number;
  unchanged: number;
  failed: number;
  errors: RowError[];
  /** More rows failed than are listed. */
  errorsTruncated: boolean;
  dryRun: boolean;
  seconds: number;
}

/** The file cannot be imported at all (its header is wrong); row problems are reported, not thrown. */
export class ImportFileError extends Error {}

export interface ImportOptions {
  sims: SimRegistry;
  isGroup(name: string): boolean;
  defaultGroup: string;
  thingName(imsi: string, group: string): string;
  batchRows: number;
  maxReportedErrors: number;
  /** Replace an IMEI binding to another device instead of refusing the row. */
  force: boolean;
  /** Validate and apply in transactions that are rolled back. */
  dryRun: boolean;
  /** Called inside the row's transaction when the import binds an IMEI (to audit it atomically). */
  onImeiBound?(imsi: string, imei: string, previous: string | null): void;
}

const imeiMessages: Record<ImeiProblem, string> = {
  not_digits: 'IMEI must contain digits only',
  bad_length: 'IMEI must be 15 digits (or a 16-digit IMEISV)',
  bad_check_digit: 'IMEI check digit is wrong (Luhn): re-read the number',
};
const tagKey = new RegExp(TAG_KEY_PATTERN);

/**
 * Streams a SIM list (`imsi,iccid,msisdn,group,imei,tags`, header first, any column order, tags as
 * `k=v;k2=v2`) into the registry: each row validated on its own, valid rows upserted in batches of
 * batchRows per transaction, invalid ones reported with their line number. Importing the same file
 * again changes nothing.
 */
export async function importSimsCsv(input: Readable, opts: ImportOptions): Promise<ImportReport> {
  const started = performance.now();
  const report: ImportReport = { rows: 0, created: 0, updated: 0, unchanged: 0, failed: 0, errors: [], errorsTruncated: false, dryRun: opts.dryRun, seconds: 0 };
  const addError = (e: RowError) => {
    report.failed++;
    if (report.errors.length < opts.maxReportedErrors) report.errors.push(e);
    else report.errorsTruncated = true;
  };

  const parser = parse({ bom: true, trim: true, skip_empty_lines: true, relax_column_count: true, info: true, skip_records_with_error: true, max_record_size: 65_536 });
  // A malformed record (an unclosed quote...) is one bad row, not a failed import.
  parser.on('skip', (err: CsvError) => {
    report.rows++;
    addError({ line: (err as CsvError & { lines?: number }).lines ?? 0, message: `unreadable CSV: ${err.message}` });
  });
  input.on('error', (err) => parser.destroy(err));
  input.pipe(parser);

  let columns: Map<Column, number> | undefined;
  let batch: Array<{ row: SimImportRow; line: number }> = [];
  const flush = async () => {
    if (!batch.length) return;
    const outcomes = await opts.sims.upsertMany(
      batch.map((b) => b.row),
      { force: opts.force, dryRun: opts.dryRun, onRow: (row, outcome) => bound(row, outcome) },
    );
    outcomes.forEach((o, i) => {
      if (o.result === 'failed') addError({ line: batch[i]!.line, imsi: batch[i]!.row.imsi, field: o.field, message: o.message });
      else report[o.result]++;
    });
    batch = [];
  };
  const bound = (row: SimImportRow, o: ImportOutcome) => {
    if (o.result !== 'failed' && o.imeiBound) opts.onImeiBound?.(row.imsi, o.imeiBound.imei, o.imeiBound.previous);
  };

  for await (const { record, info } of parser as AsyncIterable<{ record: string[]; info: { lines: number } }>) {
    if (!columns) {
      columns = readHeader(record);
      continue;
    }
    report.rows++;
    const checked = checkRow(record, columns, opts);
    if ('message' in checked) addError({ ...checked, line: info.lines });
    else batch.push({ row: checked, line: info.lines });
    if (batch.length >= opts.batchRows) await flush();
  }
  if (!columns) throw new ImportFileError(`the file is empty: its first line must be the header ${CSV_COLUMNS.join(',')}`);
  await flush();
  report.seconds = Math.round(performance.now() - started) / 1000;
  return report;
}

function readHeader(record: string[]): Map<Column, number> {
  const columns = new Map<Column, number>();
  record.forEach((name, i) => {
    const col = name.toLowerCase() as Column;
    if (!CSV_COLUMNS.includes(col)) {
      throw new ImportFileError(`line 1: unknown column "${name}"; the header names columns from ${CSV_COLUMNS.join(',')} (imsi required)`);
    }
    if (columns.has(col)) throw new ImportFileError(`line 1: column "${col}" appears twice`);
    columns.set(col, i);
  });
  if (!columns.has('imsi')) throw new ImportFileError(`line 1: the header must name an imsi column (expected ${CSV_COLUMNS.join(',')})`);
  return columns;
}

function checkRow(record: string[], columns: Map<Column, number>, opts: ImportOptions): SimImportRow | Omit<RowError, 'line'> {
  const get = (c: Column) => {
    const i = columns.get(c);
    return i === undefined ? '' : (record[i] ?? '');
  };
  const imsi = get('imsi');
  const bad = (field: string, message: string) => ({ imsi: imsi || undefined, field, message });
  if (!isImsi(imsi)) return bad('imsi', imsi ? 'IMSI must be 6-15 digits' : 'IMSI is missing');

  const iccid = get('iccid');
  if (iccid && !/^89\d{17,18}$/.test(iccid)) return bad('iccid', 'ICCID must be 19-20 digits starting with 89');
  if (iccid && !isIccid(iccid)) return bad('iccid', 'ICCID check digit is wrong (Luhn): re-read the number');

  const msisdn = get('msisdn');
  if (msisdn && !/^\+?\d{5,15}$/.test(msisdn)) return bad('msisdn', 'MSISDN must be 5-15 digits, optionally with a leading +');

  const group = get('group') || opts.defaultGroup;
  if (!opts.isGroup(group)) return bad('group', `group "${group}" is not in the configuration`);

  const rawImei = get('imei');
  let imei: string | undefined;
  if (rawImei) {
    const n = normaliseImei(rawImei);
    if ('problem' in n) return bad('imei', imeiMessages[n.problem]);
    imei = n.imei;
  }

  const rawTags = get('tags');
  let tags: Record<string, string> | undefined;
  if (rawTags) {
    const parsed = parseTags(rawTags);
    if (typeof parsed === 'string') return bad('tags', parsed);
    tags = parsed;
  }
  return { imsi, group, thingName: opts.thingName(imsi, group), iccid: iccid || undefined, msisdn: msisdn || undefined, imei, tags };
}

/** `k=v;k2=v2` → { k: 'v', k2: 'v2' }, or what is wrong with it. */
export function parseTags(text: string): Record<string, string> | string {
  const tags: Record<string, string> = {};
  for (const part of text.split(';')) {
    if (!part.trim()) continue;
    const eq = part.indexOf('=');
    if (eq < 0) return `tag "${part.trim()}" has no "=": write tags as k=v;k2=v2`;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (!tagKey.test(key)) return `tag key "${key}" must be 1-64 letters, digits or _ . : -`;
    if (value.length > 256) return `tag "${key}" is longer than 256 characters`;
    if (key in tags) return `tag "${key}" is given twice`;
    tags[key] = value;
  }
  return tags;
}
