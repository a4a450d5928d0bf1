import { existsSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import type { Db } from '../storage/db.ts';
import { KeyCipher } from './key-cipher.ts';

export class MasterKeyError extends Error {
  override name = 'MasterKeyError';
}

function parseKey(text: string, where: string): Buffer {
  const t = text.trim();
  const key = /^[0-9a-fA-F]{64}$/.test(t) ? Buffer.from(t, 'hex') : Buffer.from(t, 'base64');
  if (key.length !== 32) throw new MasterKeyError(`${where}: master key must be 32 bytes, as 64 hex digits or base64`);
  return key;
}

/**
 * Finds the master key: SIMBRIDGE_MASTER_KEY, else the configured key file (refused when others can
 * read it), else, in the sandbox only, a key generated once into the data directory.
 */
export function loadMasterKey(opts: { env: NodeJS.ProcessEnv; file?: string; generateAt?: string }): Buffer {
  const fromEnv = opts.env.SIMBRIDGE_MASTER_KEY;
  if (fromEnv) return parseKey(fromEnv, 'SIMBRIDGE_MASTER_KEY');
  const file = opts.file ?? (opts.generateAt && existsSync(opts.generateAt) ? opts.generateAt : undefined);
  if (file) {
    let mode: number;
    try {
      mode = statSync(file).mode;
    } catch (err) {
      throw new MasterKeyError(`${file}: cannot read master key file: ${(err as Error).message}`);
    }
    if (mode & 0o077) throw new MasterKeyError(`${file}: master key file is readable by others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
    return parseKey(readFileSync(file, 'utf8'), file);
  }
  if (opts.generateAt) {
    const key = randomBytes(32);
    mkdirSync(dirname(opts.generateAt), { recursive: true });
    writeFileSync(opts.generateAt, key.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
    return key;
  }
  throw new MasterKeyError('no master key: set SIMBRIDGE_MASTER_KEY or security.masterKeyFile (private keys are encrypted at rest)');
}

const CHECK_KEY = 'master_key_check';
const CHECK_PLAIN = Buffer.from('simbridge master key check');

/** Fails clearly when the key is not the one this database's private keys were sealed with. */
export function checkMasterKey(db: Db, cipher: KeyCipher): void {
  const row = db.prepare('SELECT value FROM meta WHERE key = ?').get(CHECK_KEY) as { value: Buffer } | undefined;
  if (!row) {
    db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run(CHECK_KEY, cipher.encrypt(CHECK_PLAIN, CHECK_KEY));
    return;
  }
  let plain: Buffer | undefined;
  try {
    plain = cipher.decrypt(row.value, CHECK_KEY);
  } catch {
    plain = undefined;
  }
  if (!plain || !plain.equals(CHECK_PLAIN)) {
    throw new MasterKeyError('the master key does not match the one this database was created with');
  }
}
