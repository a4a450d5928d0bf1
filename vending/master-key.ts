import { existsSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import type { CredentialStore } from '../storage/credentials.ts';
import type { GatewayCredentialStore } from '../storage/gateway-credentials.ts';
import type { MetaStore } from '../storage/meta.ts';
import type { KeyCipher } from './key-cipher.ts';

export class MasterKeyError extends Error {
  override name = 'MasterKeyError';
}

// Strict forms only: a lenient base64 decoder would turn a typo'd hex key or a passphrase into some
// other 32 bytes, silently.
const HEX = /^[0-9a-fA-F]{64}$/;
const BASE64 = /^[A-Za-z0-9+/]{43}=$|^[A-Za-z0-9_-]{43}$/;

function parseKey(text: string, where: string): Buffer {
  const t = text.trim();
  if (HEX.test(t)) return Buffer.from(t, 'hex');
  if (BASE64.test(t)) return Buffer.from(t, t.endsWith('=') ? 'base64' : 'base64url');
  throw new MasterKeyError(`${where}: master key must be 32 bytes, as 64 hex digits or base64 (e.g. openssl rand -hex 32)`);
}

function readKeyFile(file: string): Buffer {
  let mode: number;
  try {
    const st = statSync(file);
    if (!st.isFile()) throw new Error('not a regular file');
    mode = st.mode;
  } catch (err) {
    throw new MasterKeyError(`${file}: cannot read master key file: ${(err as Error).message}`);
  }
  if (mode & 0o077) throw new MasterKeyError(`${file}: master key file is readable by others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
  return parseKey(readFileSync(file, 'utf8'), file);
}

/**
 * Finds the master key: SIMBRIDGE_MASTER_KEY, else the configured key file (refused when group or
 * others can read it), else, in the sandbox only (generateAt), a key generated once into the data
 * directory. Outside the sandbox there is no fallback: private keys are never stored in the clear.
 */
export function loadMasterKey(opts: { env: NodeJS.ProcessEnv; file?: string; generateAt?: string }): Buffer {
  const fromEnv = opts.env.SIMBRIDGE_MASTER_KEY;
  if (fromEnv) return parseKey(fromEnv, 'SIMBRIDGE_MASTER_KEY');
  if (opts.file) return readKeyFile(opts.file);
  if (!opts.generateAt) {
    throw new MasterKeyError('no master key: set SIMBRIDGE_MASTER_KEY or security.masterKeyFile (private keys are encrypted at rest)');
  }
  if (existsSync(opts.generateAt)) return readKeyFile(opts.generateAt);
  const key = randomBytes(32);
  mkdirSync(dirname(opts.generateAt), { recursive: true });
  try {
    writeFileSync(opts.generateAt, key.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
  } catch (err) {
    // Another process starting on the same data directory generated it first: use that one.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readKeyFile(opts.generateAt);
    throw err;
  }
  return key;
}

/**
 * The previous master keys of a rotation: SIMBRIDGE_PREVIOUS_MASTER_KEYS (comma-separated) or
 * security.previousMasterKeyFiles (each refused when group or others can read it, as the current one).
 */
export function loadPreviousMasterKeys(opts: { env: NodeJS.ProcessEnv; files: string[] }): Buffer[] {
  const fromEnv = opts.env.SIMBRIDGE_PREVIOUS_MASTER_KEYS;
  if (fromEnv) return fromEnv.split(',').filter(Boolean).map((k, i) => parseKey(k, `SIMBRIDGE_PREVIOUS_MASTER_KEYS[${i}]`));
  return opts.files.map(readKeyFile);
}

const CHECK_KEY = 'master_key_check';
const CHECK_PLAIN = Buffer.from('simbridge master key check');
const MISMATCH =
  'the master key does not match the one this database was created with: its private keys cannot be decrypted ' +
  '(check SIMBRIDGE_MASTER_KEY / security.masterKeyFile)';

function opens(cipher: KeyCipher, sealed: Buffer, owner: string, expected?: Buffer): boolean {
  try {
    const plain = cipher.decrypt(sealed, owner);
    return expected ? plain.equals(expected) : true;
  } catch {
    return false;
  }
}

/**
 * Fails clearly at startup when the key is not the one this database's private keys were sealed with,
 * instead of at the first device. A database from before the check value existed is judged by one of
 * its stored keys before the check value is written.
 */
export async function checkMasterKey(stores: { meta: MetaStore; credentials: CredentialStore }, cipher: KeyCipher): Promise<void> {
  const check = await stores.meta.get(CHECK_KEY);
  if (check) {
    // Any key of the ring: the check value moves to the new key only once a rotation has finished.
    if (!opens(cipher, check, CHECK_KEY, CHECK_PLAIN)) throw new MasterKeyError(MISMATCH);
    return;
  }
  const sample = await stores.credentials.anySealedKey();
  if (sample && !opens(cipher, sample.keyEnc, sample.imsi)) throw new MasterKeyError(MISMATCH);
  await stores.meta.putIfAbsent(CHECK_KEY, cipher.encrypt(CHECK_PLAIN, CHECK_KEY));
}

/**
 * Re-seals every stored private key that is not under the current key yet, then the check value, while
 * the gateway may run: each key is replaced only if nobody changed it meanwhile. Keys that no key of the
 * ring opens are counted, never touched.
 */
export async function rotateSealedKeys(
  stores: { meta: MetaStore; credentials: CredentialStore; gatewayCredentials?: GatewayCredentialStore },
  cipher: KeyCipher,
  batch = 500,
): Promise<{ resealed: number; current: number; unreadable: number }> {
  const counts = { resealed: 0, current: 0, unreadable: 0 };
  for (let after = 0; ; ) {
    const rows = await stores.credentials.sealedKeys(after, batch);
    if (rows.length === 0) break;
    for (const row of rows) {
      after = row.id;
      if (cipher.isCurrent(row.keyEnc, row.imsi)) {
        counts.current++;
        continue;
      }
      let plain: Buffer;
      try {
        plain = cipher.decrypt(row.keyEnc, row.imsi);
      } catch {
        counts.unreadable++;
        continue;
      }
      if (await stores.credentials.replaceSealedKey(row.id, row.keyEnc, cipher.encrypt(plain, row.imsi))) counts.resealed++;
      else counts.current++; // changed meanwhile: whoever changed it sealed it under the current key
      plain.fill(0);
    }
  }
  // The gateway's own keys (lifecycle events), sealed for `gateway:{name}`.
  for (const row of (await stores.gatewayCredentials?.sealedKeys()) ?? []) {
    const owner = `gateway:${row.gateway}`;
    if (cipher.isCurrent(row.keyEnc, owner)) {
      counts.current++;
      continue;
    }
    let plain: Buffer;
    try {
      plain = cipher.decrypt(row.keyEnc, owner);
    } catch {
      counts.unreadable++;
      continue;
    }
    if (await stores.gatewayCredentials!.replaceSealedKey(row.gateway, row.keyEnc, cipher.encrypt(plain, owner))) counts.resealed++;
    else counts.current++;
    plain.fill(0);
  }
  if (counts.unreadable === 0) await stores.meta.put(CHECK_KEY, cipher.encrypt(CHECK_PLAIN, CHECK_KEY));
  return counts;
}
