import Database from 'better-sqlite3';
import { chmodSync, existsSync, rmSync } from 'node:fs';

/**
 * Copies a live database to `out` with SQLite's online backup: a consistent snapshot, taken page by
 * page while the gateway goes on writing (WAL), never a torn copy of the files. The copy holds
 * payloads and encrypted device keys, so it is created readable by its owner only.
 */
export async function backupDatabase(file: string, out: string): Promise<{ pages: number }> {
  if (!existsSync(file)) throw new Error(`${file}: no database here (is dataDir right?)`);
  if (existsSync(out)) throw new Error(`${out} exists already; choose a new file`);
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    // Another process holds write locks now and then: wait for them instead of failing.
    db.pragma('busy_timeout = 5000');
    const { totalPages } = await db.backup(out);
    chmodSync(out, 0o600);
    const copy = new Database(out, { readonly: true });
    try {
      const check = copy.pragma('quick_check', { simple: true });
      if (check !== 'ok') throw new Error(`the backup failed its integrity check: ${String(check)}`);
    } finally {
      copy.close();
    }
    return { pages: totalPages };
  } catch (err) {
    rmSync(out, { force: true });
    throw err;
  } finally {
    db.close();
  }
}
