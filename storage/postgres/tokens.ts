import { randomBytes } from 'node:crypto';
import { fromRow, hashToken, PREFIX, TOUCH_EVERY_MS, type AdminToken, type AdminTokenStore, type Role, type TokenRow } from '../tokens.ts';
import type { Queryable } from './connect.ts';
import { changed } from './params.ts';

const COLUMNS = 'id, role, name, created_at, last_used_at, revoked_at';

export class PgTokenStore implements AdminTokenStore {
  constructor(private readonly db: Queryable) {}

  async create(role: Role, name: string): Promise<{ token: string; record: AdminToken }> {
    const token = PREFIX + randomBytes(32).toString('base64url');
    const id = randomBytes(4).toString('hex');
    const now = Date.now();
    await this.db.query('INSERT INTO admin_tokens (id, token_hash, role, name, created_at) VALUES ($1, $2, $3, $4, $5)', [id, hashToken(token), role, name, now]);
    return { token, record: { id, role, name, createdAt: now, lastUsedAt: null, revokedAt: null } };
  }

  async verify(presented: string): Promise<AdminToken | undefined> {
    if (!presented.startsWith(PREFIX) || presented.length > 128) return undefined;
    const { rows } = await this.db.query<TokenRow>(`SELECT ${COLUMNS} FROM admin_tokens WHERE token_hash = $1`, [hashToken(presented)]);
    const row = rows[0];
    if (!row || row.revoked_at !== null) return undefined;
    const now = Date.now();
    if (row.last_used_at === null || now - row.last_used_at > TOUCH_EVERY_MS) await this.db.query('UPDATE admin_tokens SET last_used_at = $1 WHERE id = $2', [now, row.id]);
    return fromRow(row);
  }

  async list(): Promise<AdminToken[]> {
    return (await this.db.query<TokenRow>(`SELECT ${COLUMNS} FROM admin_tokens ORDER BY created_at, id`)).rows.map(fromRow);
  }

  async revoke(id: string): Promise<boolean> {
    return changed(await this.db.query('UPDATE admin_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL', [Date.now(), id])) === 1;
  }
}
