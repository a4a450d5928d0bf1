import type { Db } from './db.ts';

export type GatewayStep = 'key' | 'csr_sent' | 'certificate' | 'ready';

/** The gateway's own certificate and where its vending stands (migration 012). */
export interface GatewayCredentialRow {
  gateway: string;
  thingName: string;
  step: GatewayStep;
  keyAlg: string;
  /** Private key, sealed under the master key (vending/key-cipher.ts). */
  keyEnc: Buffer;
  csrPem: string;
  certId: string | null;
  certArn: string | null;
  certPem: string | null;
  policyName: string | null;
  createdAt: number;
  updatedAt: number;
}

export type GatewayCredentialFields = Partial<Pick<GatewayCredentialRow, 'certId' | 'certArn' | 'certPem' | 'policyName'>>;

export interface GatewayCredentialStore {
  get(gateway: string): Promise<GatewayCredentialRow | undefined>;
  /** Creates the row at step `key`; false when the gateway has one already. */
  create(row: Pick<GatewayCredentialRow, 'gateway' | 'thingName' | 'keyAlg' | 'keyEnc' | 'csrPem'>): Promise<boolean>;
  /** Moves the row from `from` to `to` with these columns; false when it was not at `from`. */
  advance(gateway: string, from: GatewayStep, to: GatewayStep, fields?: GatewayCredentialFields): Promise<boolean>;
  /** Every gateway's sealed key (a master-key rotation re-seals them). */
  sealedKeys(): Promise<Array<{ gateway: string; keyEnc: Buffer }>>;
  /** Replaces a sealed key only if it is still `old`; false when it changed meanwhile. */
  replaceSealedKey(gateway: string, old: Buffer, sealed: Buffer): Promise<boolean>;
}

interface Row {
  gateway: string;
  thing_name: string;
  step: GatewayStep;
  key_alg: string;
  key_enc: Buffer;
  csr_pem: string;
  cert_id: string | null;
  cert_arn: string | null;
  cert_pem: string | null;
  policy_name: string | null;
  created_at: number;
  updated_at: number;
}

/** A gateway_credentials row, as both dialects return it. */
export function fromGatewayRow(r: Row): GatewayCredentialRow {
  return {
    gateway: r.gateway,
    thingName: r.thing_name,
    step: r.step,
    keyAlg: r.key_alg,
    keyEnc: Buffer.from(r.key_enc),
    csrPem: r.csr_pem,
    certId: r.cert_id,
    certArn: r.cert_arn,
    certPem: r.cert_pem,
    policyName: r.policy_name,
    createdAt: Number(r.created_at),
    updatedAt: Number(r.updated_at),
  };
}

export type { Row as GatewayCredentialDbRow };

export class SqliteGatewayCredentials implements GatewayCredentialStore {
  private readonly getStmt;
  private readonly createStmt;
  private readonly advanceStmt;
  private readonly keysStmt;
  private readonly resealStmt;

  constructor(
    db: Db,
    private readonly now: () => number = Date.now,
  ) {
    this.getStmt = db.prepare<[string], Row>('SELECT * FROM gateway_credentials WHERE gateway = ?');
    this.createStmt = db.prepare(
      `INSERT INTO gateway_credentials (gateway, thing_name, step, key_alg, key_enc, csr_pem, created_at, updated_at)
       VALUES (?, ?, 'key', ?, ?, ?, ?, ?) ON CONFLICT (gateway) DO NOTHING`,
    );
    this.advanceStmt = db.prepare(
      `UPDATE gateway_credentials SET step = ?, cert_id = coalesce(?, cert_id), cert_arn = coalesce(?, cert_arn), cert_pem = coalesce(?, cert_pem),
         policy_name = coalesce(?, policy_name), updated_at = ? WHERE gateway = ? AND step = ?`,
    );
    this.keysStmt = db.prepare<[], { gateway: string; key_enc: Buffer }>('SELECT gateway, key_enc FROM gateway_credentials ORDER BY gateway');
    this.resealStmt = db.prepare('UPDATE gateway_credentials SET key_enc = ? WHERE gateway = ? AND key_enc = ?');
  }

  async sealedKeys(): Promise<Array<{ gateway: string; keyEnc: Buffer }>> {
    return this.keysStmt.all().map((r) => ({ gateway: r.gateway, keyEnc: r.key_enc }));
  }

  async replaceSealedKey(gateway: string, old: Buffer, sealed: Buffer): Promise<boolean> {
    return this.resealStmt.run(sealed, gateway, old).changes === 1;
  }

  async get(gateway: string): Promise<GatewayCredentialRow | undefined> {
    const row = this.getStmt.get(gateway);
    return row && fromGatewayRow(row);
  }

  async create(row: Pick<GatewayCredentialRow, 'gateway' | 'thingName' | 'keyAlg' | 'keyEnc' | 'csrPem'>): Promise<boolean> {
    const at = this.now();
    return this.createStmt.run(row.gateway, row.thingName, row.keyAlg, row.keyEnc, row.csrPem, at, at).changes === 1;
  }

  async advance(gateway: string, from: GatewayStep, to: GatewayStep, f: GatewayCredentialFields = {}): Promise<boolean> {
    return this.advanceStmt.run(to, f.certId ?? null, f.certArn ?? null, f.certPem ?? null, f.policyName ?? null, this.now(), gateway, from).changes === 1;
  }
}
