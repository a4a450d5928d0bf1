import { isUtf8 } from 'node:buffer';
import { parse } from 'csv-parse/sync';

/** One line of a CSV file: its fields, or why it cannot be read; `line` as an editor counts it. */
export type CsvLine = { line: number; fields: string[] } | { line: number; problem: string };

const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

/**
 * Reads a CSV file line by line (LF or CRLF; one record per line, so a quoted field cannot span lines),
 * keeping memory bounded by maxLineBytes. Each line stands alone: a line too long, not UTF-8 or with a
 * broken quote is reported with its number and the next line is read as usual. (csv-parse's streaming
 * parser, after skipping such a record, drops the rest of the chunk it was reading: thousands of rows.)
 * Blank lines are skipped.
 */
export async function* csvLines(input: AsyncIterable<Buffer | string> | Iterable<Buffer | string>, maxLineBytes: number): AsyncGenerator<CsvLine> {
  let parts: Buffer[] = [];
  let size = 0;
  let tooLong = false;
  let line = 0;
  const take = (bytes: Buffer) => {
    if (tooLong || !bytes.length) return;
    size += bytes.length;
    if (size > maxLineBytes) (tooLong = true), (parts = []);
    else parts.push(bytes);
  };
  const end = (): CsvLine | undefined => {
    line++;
    const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    const wasTooLong = tooLong;
    (parts = []), (size = 0), (tooLong = false);
    if (wasTooLong) return { line, problem: `line is longer than ${maxLineBytes} bytes; not read` };
    return readLine(bytes, line);
  };

  for await (const chunk of input) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    let pos = 0;
    for (let nl = buf.indexOf(10, pos); nl >= 0; pos = nl + 1, nl = buf.indexOf(10, pos)) {
      take(buf.subarray(pos, nl));
      const read = end();
      if (read) yield read;
    }
    take(buf.subarray(pos));
  }
  if (size || tooLong) {
    const read = end();
    if (read) yield read;
  }
}

function readLine(raw: Buffer, line: number): CsvLine | undefined {
  let bytes = raw.at(-1) === 13 ? raw.subarray(0, -1) : raw;
  if (line === 1 && bytes.subarray(0, 3).equals(BOM)) bytes = bytes.subarray(3);
  // Decoding would quietly turn a Latin-1 "é" into U+FFFD and store that: refuse the line instead.
  if (!isUtf8(bytes)) return { line, problem: 'line is not valid UTF-8: save the file as UTF-8 and import it again' };
  const text = bytes.toString('utf8');
  if (!text.trim()) return undefined;
  // Most lines have no quotes; those that do get csv-parse's full quoting rules.
  if (!text.includes('"')) return { line, fields: text.split(',').map((f) => f.trim()) };
  try {
    const records = parse(text, { trim: true, relax_column_count: true }) as string[][];
    return { line, fields: records[0] ?? [] };
  } catch (err) {
    return { line, problem: `unreadable CSV: ${(err as Error).message.replace(/ at line \d+/, '')}` };
  }
}
