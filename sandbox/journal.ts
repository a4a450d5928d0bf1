// Durable key/value records for the registry: an append-only JSON-lines file,
// one line per change, compacted into a snapshot on open. Appends are small and
// cheap (no rewrite of the whole registry per API call), and a line cut short
// by a crash is ignored on the next open.
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';

type Entry = { k: string; id: string; v?: unknown };

export class Journal {
  private readonly file: string;
  private fd: number | undefined;
  /** kind → id → value, as of the last line read or written. */
  readonly data = new Map<string, Map<string, unknown>>();

  constructor(file: string) {
    this.file = file;
    if (existsSync(file)) this.replay(readFileSync(file, 'utf8'));
    this.compact();
  }

  /** Records value under (kind, id); undefined deletes it. */
  put(kind: string, id: string, value: unknown): void {
    const table = this.table(kind);
    if (value === undefined) table.delete(id);
    else table.set(id, value);
    if (this.fd === undefined) throw new Error('journal is closed');
    const entry: Entry = value === undefined ? { k: kind, id } : { k: kind, id, v: value };
    writeSync(this.fd, JSON.stringify(entry) + '\n');
  }

  table(kind: string): Map<string, unknown> {
    let t = this.data.get(kind);
    if (!t) this.data.set(kind, (t = new Map()));
    return t;
  }

  close(): void {
    if (this.fd === undefined) return;
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = undefined;
  }

  private replay(text: string): void {
    for (const line of text.split('\n')) {
      if (!line) continue;
      let e: Entry;
      try {
        e = JSON.parse(line) as Entry;
      } catch {
        continue; // torn last line after a crash
      }
      if (!('v' in e)) this.table(e.k).delete(e.id);
      else this.table(e.k).set(e.id, e.v);
    }
  }

  /** Rewrites the file as one line per live record, then reopens it for appending. */
  private compact(): void {
    const tmp = `${this.file}.tmp`;
    const fd = openSync(tmp, 'w', 0o644);
    for (const [k, table] of this.data) {
      for (const [id, v] of table) writeSync(fd, JSON.stringify({ k, id, v }) + '\n');
    }
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, this.file);
    this.fd = openSync(this.file, 'a');
  }
}
