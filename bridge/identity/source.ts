/** What a device says about itself on connect or request (MQTT username/client id, HTTP headers). */
export interface DeviceClaim {
  imsi?: string;
  imei?: string;
  secret?: string;
}

/** Who a connection is, as established by an identity source. */
export interface NetworkIdentity {
  imsi: string;
  /** 15-digit IMEI, when known. */
  imei?: string;
  msisdn?: string;
  source: string;
}

export type RefusalReason =
  | 'invalid_imsi'
  | 'invalid_imei'
  | 'unidentified'
  | 'unknown_sim'
  | 'sim_suspended'
  | 'sim_terminated'
  | 'imei_mismatch'
  | 'imei_not_bound'
  | 'imei_unknown'
  | 'bad_secret'
  | 'claim_mismatch';

export class Refusal {
  constructor(
    readonly reason: RefusalReason,
    readonly detail: string,
    /** The SIM concerned, when known (for the audit log). */
    readonly imsi?: string,
    /** Extra facts for the audit row (e.g. the bound and the seen IMEI). */
    readonly facts: Record<string, unknown> = {},
  ) {}
}

/** An identity source (claimed, static, radius) turns a remote address and a claim into an identity. */
export interface IdentitySource {
  readonly name: string;
  identify(remoteAddress: string, claim: DeviceClaim): NetworkIdentity | Refusal;
}
