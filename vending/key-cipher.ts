import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

const IV_BYTES = 12;
const TAG_BYTES = 16;

/**
 * Encrypts private keys at rest with AES-256-GCM: iv (12 random bytes) | tag (16) | ciphertext. The
 * associated data binds a ciphertext to its owner (the IMSI), so a key row copied onto another SIM does
 * not decrypt. A wrong master key or any altered byte fails the tag check.
 *
 * While the master key is being rotated the cipher holds a key ring: it encrypts under the current key
 * and decrypts under whichever key of the ring the tag accepts, so the gateway runs on through a
 * rotation. The ring is replaced in place (setKeys) when the configuration names new keys.
 */
export class KeyCipher {
  private current!: Buffer;
  private previous: Buffer[] = [];

  constructor(masterKey: Buffer, previous: Buffer[] = []) {
    this.setKeys(masterKey, previous);
  }

  setKeys(masterKey: Buffer, previous: Buffer[] = []): void {
    for (const k of [masterKey, ...previous]) if (k.length !== 32) throw new Error('master key must be 32 bytes');
    this.current = masterKey;
    this.previous = previous.filter((k) => !k.equals(masterKey));
  }

  encrypt(plain: Buffer, owner: string): Buffer {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.current, iv);
    cipher.setAAD(Buffer.from(owner));
    const body = Buffer.concat([cipher.update(plain), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), body]);
  }

  decrypt(sealed: Buffer, owner: string): Buffer {
    let failure: unknown;
    for (const key of [this.current, ...this.previous]) {
      try {
        return open(key, sealed, owner);
      } catch (err) {
        failure ??= err;
      }
    }
    throw failure;
  }

  /** Whether the sealed bytes are under the current key already (a rotation leaves them as they are). */
  isCurrent(sealed: Buffer, owner: string): boolean {
    try {
      open(this.current, sealed, owner);
      return true;
    } catch {
      return false;
    }
  }
}

function open(key: Buffer, sealed: Buffer, owner: string): Buffer {
  if (sealed.length <= IV_BYTES + TAG_BYTES) throw new Error('sealed key is too short (wiped or corrupt)');
  const iv = sealed.subarray(0, IV_BYTES);
  const tag = sealed.subarray(IV_BYTES, IV_BYTES + TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  decipher.setAAD(Buffer.from(owner));
  decipher.setAuthTag(tag);
  return Buffer.concat([decipher.update(sealed.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]);
}
