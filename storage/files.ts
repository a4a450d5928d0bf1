import { accessSync, chmodSync, closeSync, constants, existsSync, mkdirSync, openSync, statfsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

/** The data directory or the database file cannot be used; the message names the path and the cause. */
export class StorageError extends Error {
  override name = 'StorageError';
}

/** The database server cannot be reached (or refuses this client) at start: the CLI exits EX_UNAVAILABLE (69). */
export class StorageUnavailableError extends StorageError {
  override name = 'StorageUnavailableError';
}

const cause = (err: unknown) => {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `${e.code}: ${e.message.replace(/^\w+: /, '').replace(/, \w+ '.*'$/, '')}` : String(e.message ?? e);
};

/**
 * Creates the data directory (700) if need be, and fails with the path and the cause when it cannot be
 * created or written; `why` tells the operator what is written there.
 */
export function prepareDataDirectory(dir: string, why: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new StorageError(`cannot create the data directory ${dir} (${cause(err)})`);
  }
  try {
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    throw new StorageError(`the data directory ${dir} is not writable (${cause(err)}): ${why}`);
  }
}

/**
 * Makes the database file ready to open, private to this user: the directory is created 700 and the file
 * 600 (SQLite gives its -wal and -shm files the mode of the database file), and an older database left
 * readable by others is tightened to 600. Fails with the path and the cause when the directory cannot be
 * created or written (read-only file system, permissions), instead of SQLite's "unable to open database file".
 */
export function prepareDatabaseFile(file: string): void {
  prepareDataDirectory(dirname(file), 'the database and its WAL are written there');
  if (existsSync(file)) {
    try {
      accessSync(file, constants.R_OK | constants.W_OK);
    } catch (err) {
      throw new StorageError(`the database ${file} cannot be opened for writing (${cause(err)})`);
    }
  } else {
    try {
      closeSync(openSync(file, 'a', 0o600));
    } catch (err) {
      throw new StorageError(`cannot create the database ${file} (${cause(err)})`);
    }
  }
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      if (statSync(f).mode & 0o077) chmodSync(f, 0o600);
    } catch {
      // Not there (no WAL yet) or not ours to change: SQLite reports what matters when it opens.
    }
  }
}

/**
 * Refuses a data directory that other users can read or enter: it holds every payload waiting upstream,
 * the SIM registry and the audit log. The same rule as the master key file (vending/master-key.ts).
 */
export function assertPrivateDirectory(dir: string): void {
  let mode: number;
  try {
    mode = statSync(dir).mode;
  } catch {
    return; // created private (700) when the database is opened
  }
  if (mode & 0o077) {
    throw new StorageError(
      `the data directory ${dir} is open to other users (mode ${(mode & 0o777).toString(8)}): it holds payloads, identifiers and the audit log; chmod 700 it`,
    );
  }
}

/** Bytes an unprivileged writer can still use on the file system holding `dir`. */
export function freeBytes(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}
