import type { Readable } from 'node:stream';
import { isIccid, isImsi, normaliseImei, type ImeiProblem } from '../lib/ids.ts';
import { hashSecret, verifySecret } from '../storage/secret-hash.ts';
import type { ImportOutcome, SimImportRow, SimRegistry } from '../storage/sims.ts';
import { csvLines } from './csv-lines.ts';
import { TAG_KEY_PATTERN } from './schemas.ts';
import { secretProblem } from './sim-secret.ts';

export const CSV_COLUMNS = ['imsi', 'iccid', 'msisdn', 'group', 'imei', 'tags', 'secret'] as const;
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
  /** A longer line is one failed row. */
  maxLineBytes: number;
  /** Replace an IMEI binding to another device instead of refusing the row. */
  force: boolean;
  /** Validate and apply in transactions that are rolled back. */
  dryRun: boolean;
  /** Called inside the row's transaction when the import binds an IMEI (to audit it atomically). */
  onImeiBound?(imsi: string, imei: string, previous: string | null): void;
  /** Called inside the row's transaction when the import sets a SIM's secret. */
  onSecretSet?(imsi: string): void;
}

/** A checked row; its secret (plain text) is hashed just before the batch is written. */
type CheckedRow = SimImportRow & { secret?: string };

const imeiMessages: Record<ImeiProblem, string> = {
  not_digits: 'IMEI must contain digits only',
  bad_length: 'IMEI must be 15 digits (or a 16-digit IMEISV)',
  bad_check_digit: 'IMEI check digit is wrong (Luhn): re-read the number',
};
const tagKey = new RegExp(TAG_KEY_PATTERN);

/**
 * Streams a SIM list (`imsi,iccid,msisdn,group,imei,tags,secret`, header first, any column order, tags
 * as `k=v;k2=v2`, one SIM per line, UTF-8) into the registry: each row validated on its own, valid rows
 * upserted in batches of batchRows per transaction, every other row reported with its line number.
 * Importing the same file again changes nothing (a secret that still matches its stored hash is kept).
 */
export async function importSimsCsv(input: Readable, opts: ImportOptions): Promise<ImportReport> {
  const started = performance.now();
  const report: ImportReport = { rows: 0, created: 0, updated: 0, unchanged: 0, failed: 0, errors: [], errorsTruncated: false, dryRun: opts.dryRun, seconds: 0 };
  const addError = (e: RowError) => {
    report.failed++;
    if (report.errors.length < opts.maxReportedErrors) report.errors.push(e);
    else report.errorsTruncated = true;
  };

  let columns: Map<Column, number> | undefined;
  let batch: Array<{ row: CheckedRow; line: number }> = [];
  const flush = async () => {
    if (!batch.length) return;
    await hashSecrets(batch.map((b) => b.row), opts.sims);
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
    if (o.result === 'failed') return;
    if (o.imeiBound) opts.onImeiBound?.(row.imsi, o.imeiBound.imei, o.imeiBound.previous);
    if (o.secretSet) opts.onSecretSet?.(row.imsi);
  };

  for await (const read of csvLines(input, opts.maxLineBytes)) {
    if (!columns) {
      if ('problem' in read) throw new ImportFileError(`line ${read.line}: ${read.problem}`);
      columns = readHeader(read.fields);
      continue;
    }
    report.rows++;
    if ('problem' in read) {
      addError({ line: read.line, message: read.problem });
      continue;
    }
    const checked = checkRow(read.fields, columns, opts);
    if ('message' in checked) addError({ ...checked, line: read.line });
    else batch.push({ row: checked, line: read.line });
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

// Hashes computed at once: scrypt runs on libuv's thread pool (4 threads by default), which device
// secret checks and file I/O share; an import must leave them room.
const HASHING_LANES = 2;

/**
 * Secrets are stored as slow hashes (tens of ms each). One that still matches the stored hash is left
 * alone, so a re-import changes nothing.
 */
async function hashSecrets(rows: CheckedRow[], sims: SimRegistry): Promise<void> {
  const pending = rows.filter((r) => r.secret !== undefined);
  const lane = async () => {
    for (let row = pending.shift(); row; row = pending.shift()) {
      const stored = (await sims.get(row.imsi))?.secretHash;
      if (!stored || !(await verifySecret(row.secret!, stored))) row.secretHash = await hashSecret(row.secret!);
      delete row.secret;
    }
  };
  await Promise.all(Array.from({ length: HASHING_LANES }, lane));
}

function checkRow(record: string[], columns: Map<Column, number>, opts: ImportOptions): CheckedRow | Omit<RowError, 'line'> {
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

  const secret = get('secret');
  const weak = secret ? secretProblem(secret) : undefined;
  if (weak) return bad('secret', weak);
  return { imsi, group, thingName: opts.thingName(imsi, group), iccid: iccid || undefined, msisdn: msisdn || undefined, imei, tags, secret: secret || undefined };
}

/** `k=v;k2=v2` → { k: 'v', k2: 'v2' }, or what is wrong with it. */
export function parseTags(text: string): Record<string, string> | string {
  // A Map, not an object: `constructor`, `toString` and `__proto__` are tag keys like any other.
  const tags = new Map<string, string>();
  for (const part of text.split(';')) {
    if (!part.trim()) continue;
    const eq = part.indexOf('=');
    if (eq < 0) return `tag "${part.trim()}" has no "=": write tags as k=v;k2=v2`;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (!tagKey.test(key)) return `tag key "${key}" must be 1-64 letters, digits or _ . : -`;
    if (value.length > 256) return `tag "${key}" is longer than 256 characters`;
    if (tags.has(key)) return `tag "${key}" is given twice`;
    tags.set(key, value);
  }
  // fromEntries defines own properties, so even "__proto__" stays a plain key.
  return Object.fromEntries(tags);
}
