import { randomBytes } from 'node:crypto';

/**
 * A SIM's secret, as a device presents it (MQTT password, HTTP bearer token): visible ASCII, long enough
 * not to be guessed. Stored only as a slow hash (storage/secret-hash.ts); shown once, when set.
 */
export const SECRET_PATTERN = '^[\\x21-\\x7e]{16,256}$';
const secretRule = new RegExp(SECRET_PATTERN);

export const secretProblem = (secret: string): string | undefined =>
  secretRule.test(secret) ? undefined : 'a secret is 16-256 visible ASCII characters (no spaces)';

/** 24 random bytes as base64url: 32 characters a device can take as password or bearer token. */
export const generateSecret = (): string => randomBytes(24).toString('base64url');
