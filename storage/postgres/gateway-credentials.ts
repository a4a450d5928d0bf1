import { fromGatewayRow, type GatewayCredentialDbRow, type GatewayCredentialFields, type GatewayCredentialRow, type GatewayCredentialStore, type GatewayStep } from '../gateway-credentials.ts';
import type { Queryable } from './connect.ts';
import { changed } from './params.ts';

/** The gateway's own credentials on PostgreSQL (storage/gateway-credentials.ts for the rules). */
export class PgGatewayCredentials implements GatewayCredentialStore {
  constructor(
    private readonly db: Queryable,
    private readonly now: () => number = Date.now,
  ) {}

  async get(gateway: string): Promise<GatewayCredentialRow | undefined> {
    const { rows } = await this.db.query<GatewayCredentialDbRow>('SELECT * FROM gateway_credentials WHERE gateway = $1', [gateway]);
    return rows[0] && fromGatewayRow(rows[0]);
  }

  async create(row: Pick<GatewayCredentialRow, 'gateway' | 'thingName' | 'keyAlg' | 'keyEnc' | 'csrPem'>): Promise<boolean> {
    const at = this.now();
    const result = await this.db.query(
      `INSERT INTO gateway_credentials (gateway, thing_name, step, key_alg, key_enc, csr_pem, created_at, updated_at)
       VALUES ($1, $2, 'key', $3, $4, $5, $6, $6) ON CONFLICT (gateway) DO NOTHING`,
      [row.gateway, row.thingName, row.keyAlg, row.keyEnc, row.csrPem, at],
    );
    return changed(result) === 1;
  }

  async advance(gateway: string, from: GatewayStep, to: GatewayStep, f: GatewayCredentialFields = {}): Promise<boolean> {
    const result = await this.db.query(
      `UPDATE gateway_credentials SET step = $1, cert_id = coalesce($2, cert_id), cert_arn = coalesce($3, cert_arn), cert_pem = coalesce($4, cert_pem),
         policy_name = coalesce($5, policy_name), updated_at = $6 WHERE gateway = $7 AND step = $8`,
      [to, f.certId ?? null, f.certArn ?? null, f.certPem ?? null, f.policyName ?? null, this.now(), gateway, from],
    );
    return changed(result) === 1;
  }

  async sealedKeys(): Promise<Array<{ gateway: string; keyEnc: Buffer }>> {
    const { rows } = await this.db.query<{ gateway: string; key_enc: Buffer }>('SELECT gateway, key_enc FROM gateway_credentials ORDER BY gateway');
    return rows.map((r) => ({ gateway: r.gateway, keyEnc: r.key_enc }));
  }

  async replaceSealedKey(gateway: string, old: Buffer, sealed: Buffer): Promise<boolean> {
    return changed(await this.db.query('UPDATE gateway_credentials SET key_enc = $1 WHERE gateway = $2 AND key_enc = $3', [sealed, gateway, old])) === 1;
  }
}
