import { createHash, randomBytes } from 'node:crypto';
import type { Db } from './db.ts';

export const ROLES = ['installer', 'operator'] as const;
export type Role = (typeof ROLES)[number];

export interface AdminToken {
  id: string;
  role: Role;
  name: string;
  createdAt: number;
  lastUsedAt: number | null;
  revokedAt: number | null;
}

/** An admin_tokens row, as both dialects return it. */
export interface TokenRow {
  id: string;
  role: Role;
  name: string;
  created_at: number;
  last_used_at: number | null;
  revoked_at: number | null;
}

export const fromRow = (r: TokenRow): AdminToken => ({ id: r.id, role: r.role, name: r.name, createdAt: r.created_at, lastUsedAt: r.last_used_at, revokedAt: r.revoked_at });

// A recognisable prefix lets secret scanners and people tell an admin token from other strings.
export const PREFIX = 'sbt_';
// last_used_at is a hint for operators, not an access log: write it at most once a minute per token.
export const TOUCH_EVERY_MS = 60_000;

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** Admin API bearer tokens; the token itself is shown once at creation and never stored. */
export interface AdminTokenStore {
  create(role: Role, name: string): Promise<{ token: string; record: AdminToken }>;
  /** The live token matching a presented bearer string, if any. */
  verify(presented: string): Promise<AdminToken | undefined>;
  list(): Promise<AdminToken[]>;
  /** False when there is no live token with that id. */
  revoke(id: string): Promise<boolean>;
}

/** The SQLite token table (synchronous; the rest of the code sees it as an AdminTokenStore). */
export class TokenStore {
  private readonly byHash;
  private readonly touchStmt;

  constructor(private readonly db: Db) {
    this.byHash = db.prepare<[string], TokenRow>('SELECT id, role, name, created_at, last_used_at, revoked_at FROM admin_tokens WHERE token_hash = ?');
    this.touchStmt = db.prepare('UPDATE admin_tokens SET last_used_at = ? WHERE id = ?');
  }

  create(role: Role, name: string): { token: string; record: AdminToken } {
    const token = PREFIX + randomBytes(32).toString('base64url');
    const id = randomBytes(4).toString('hex');
    const now = Date.now();
    this.db
      .prepare('INSERT INTO admin_tokens (id, token_hash, role, name, created_at) VALUES (?, ?, ?, ?, ?)')
      .run(id, hashToken(token), role, name, now);
    return { token, record: { id, role, name, createdAt: now, lastUsedAt: null, revokedAt: null } };
  }

  /**
   * The live token matching a presented bearer string. Lookup is by hash: comparing hashes of 256-bit
   * random tokens leaks nothing useful through timing, so no constant-time compare is needed.
   */
  verify(presented: string): AdminToken | undefined {
    if (!presented.startsWith(PREFIX) || presented.length > 128) return undefined;
    const row = this.byHash.get(hashToken(presented));
    if (!row || row.revoked_at !== null) return undefined;
    const now = Date.now();
    if (row.last_used_at === null || now - row.last_used_at > TOUCH_EVERY_MS) this.touchStmt.run(now, row.id);
    return fromRow(row);
  }

  list(): AdminToken[] {
    return this.db.prepare<[], TokenRow>('SELECT id, role, name, created_at, last_used_at, revoked_at FROM admin_tokens ORDER BY created_at, id').all().map(fromRow);
  }

  revoke(id: string): boolean {
    return this.db.prepare('UPDATE admin_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(Date.now(), id).changes === 1;
  }
}
