/**
 * What vending needs from a certificate authority + device registry: IoT Core through its API (the
 * sandbox is the same provider at another endpoint), later an `own-ca` provider that signs locally and
 * registers with RegisterCertificate. Each method is one raw API call (named in its comment: quotas and
 * retries are applied around it by ApiGate under that name) and takes the call's abort signal.
 */
export interface VendingProvider {
  /** CreateCertificateFromCsr: signs the CSR and registers the certificate, ACTIVE. */
  createCertificate(csrPem: string, signal: AbortSignal): Promise<IssuedCertificate>;
  /** CreateThing: creates the thing, or accepts it when it already exists. */
  ensureThing(thingName: string, attributes: Record<string, string>, thingType: string | undefined, signal: AbortSignal): Promise<void>;
  /** CreateThingGroup: creates the group, or accepts it when it already exists. */
  ensureThingGroup(groupName: string, signal: AbortSignal): Promise<void>;
  /** AddThingToThingGroup (idempotent). */
  addThingToGroup(thingName: string, groupName: string, signal: AbortSignal): Promise<void>;
  /**
   * CreatePolicy; when the policy exists with another document: GetPolicy, ListPolicyVersions,
   * DeletePolicyVersion (the oldest non-default, at five versions) and CreatePolicyVersion as default.
   */
  ensurePolicy(policyName: string, document: string, signal: AbortSignal): Promise<PolicyOutcome>;
  /** GetPolicy: the policy's ARN and default document; undefined when it does not exist. */
  describePolicy(policyName: string, signal: AbortSignal): Promise<{ policyArn: string; document: string } | undefined>;
  /** AttachPolicy (idempotent). */
  attachPolicy(policyName: string, certificateArn: string, signal: AbortSignal): Promise<void>;
  /** AttachThingPrincipal (idempotent). */
  attachThingPrincipal(thingName: string, certificateArn: string, signal: AbortSignal): Promise<void>;
  /** DescribeEndpoint: host name of the MQTT data endpoint (iot:Data-ATS). */
  dataEndpoint(signal: AbortSignal): Promise<string>;
  /** UpdateCertificate: ACTIVE / INACTIVE. False when the certificate does not exist. */
  setCertificateStatus(certificateId: string, status: 'ACTIVE' | 'INACTIVE', signal: AbortSignal): Promise<boolean>;
  /** DetachPolicy; a policy or attachment that is gone counts as detached. */
  detachPolicy(policyName: string, certificateArn: string, signal: AbortSignal): Promise<void>;
  /** DetachThingPrincipal; a thing or attachment that is gone counts as detached. */
  detachThingPrincipal(thingName: string, certificateArn: string, signal: AbortSignal): Promise<void>;
  /** DeleteCertificate (must be INACTIVE and detached from things); a certificate that is gone counts as deleted. */
  deleteCertificate(certificateId: string, signal: AbortSignal): Promise<void>;
  /** ListCertificates, newest first, one page. */
  listCertificates(marker: string | undefined, signal: AbortSignal): Promise<{ certificates: CertificateSummary[]; nextMarker?: string }>;
  /** DescribeCertificate; undefined when it does not exist. */
  describeCertificate(certificateId: string, signal: AbortSignal): Promise<CertificateDescription | undefined>;
  /** Releases connections. */
  destroy?(): void;
}

/** What ensurePolicy did: devices see an updated policy only once IoT Core has propagated it (minutes). */
export type PolicyOutcome = 'created' | 'unchanged' | 'updated';

export interface IssuedCertificate {
  certificateId: string;
  certificateArn: string;
  certificatePem: string;
}

export interface CertificateSummary {
  certificateId: string;
  certificateArn: string;
  status: string;
  /** ms since epoch */
  createdAt: number;
}

export interface CertificateDescription extends CertificateSummary {
  certificatePem: string;
}
