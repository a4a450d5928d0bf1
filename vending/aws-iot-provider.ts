import {
  AddThingToThingGroupCommand,
  AttachPolicyCommand,
  AttachThingPrincipalCommand,
  CreateCertificateFromCsrCommand,
  CreatePolicyCommand,
  CreatePolicyVersionCommand,
  DeletePolicyVersionCommand,
  GetPolicyCommand,
  ListPolicyVersionsCommand,
  CreateThingCommand,
  CreateThingGroupCommand,
  DeleteCertificateCommand,
  DescribeCertificateCommand,
  DescribeEndpointCommand,
  DetachPolicyCommand,
  DetachThingPrincipalCommand,
  IoTClient,
  ListCertificatesCommand,
  ResourceAlreadyExistsException,
  ResourceNotFoundException,
  UpdateCertificateCommand,
} from '@aws-sdk/client-iot';
import { samePolicy } from './policy.ts';
import type { CertificateDescription, IssuedCertificate, PolicyOutcome, VendingProvider } from './provider.ts';

export interface AwsIotProviderOptions {
  region: string;
  /** Control-plane endpoint override; the sandbox is this same provider pointed elsewhere. */
  endpoint?: string;
  /** Static credentials; absent = the default AWS credential chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** Socket-level timeout of one request (ApiGate also aborts the call). */
  requestTimeoutMs: number;
}

/** IoT Core keeps at most five versions of a policy. */
const MAX_POLICY_VERSIONS = 5;

/** Absorbs the error a repeated create / delete answers, so each method is safe to run twice. */
async function tolerate(p: Promise<unknown>, expected: typeof ResourceAlreadyExistsException | typeof ResourceNotFoundException): Promise<boolean> {
  try {
    await p;
    return true;
  } catch (err) {
    if (err instanceof expected) return false;
    throw err;
  }
}

/** IoT Core through @aws-sdk/client-iot: one method per API call, no pacing or retries of its own. */
export class AwsIotProvider implements VendingProvider {
  private readonly client: IoTClient;

  constructor(opts: AwsIotProviderOptions) {
    this.client = new IoTClient({
      region: opts.region,
      endpoint: opts.endpoint,
      credentials: opts.credentials,
      // ApiGate retries, each retry through the API's token bucket; SDK retries would bypass the quota.
      maxAttempts: 1,
      requestHandler: { requestTimeout: opts.requestTimeoutMs, connectionTimeout: Math.min(opts.requestTimeoutMs, 5_000) },
    });
  }

  destroy(): void {
    this.client.destroy();
  }

  async createCertificate(csrPem: string, abortSignal: AbortSignal): Promise<IssuedCertificate> {
    const out = await this.client.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: csrPem, setAsActive: true }), { abortSignal });
    if (!out.certificateId || !out.certificateArn || !out.certificatePem) throw new Error('CreateCertificateFromCsr returned no certificate');
    return { certificateId: out.certificateId, certificateArn: out.certificateArn, certificatePem: out.certificatePem };
  }

  async ensureThing(thingName: string, attributes: Record<string, string>, thingTypeName: string | undefined, abortSignal: AbortSignal) {
    // Identical input is idempotent; a thing that exists with other attributes (group changed) is still ours.
    await tolerate(this.client.send(new CreateThingCommand({ thingName, thingTypeName, attributePayload: { attributes } }), { abortSignal }), ResourceAlreadyExistsException);
  }

  async ensureThingGroup(thingGroupName: string, abortSignal: AbortSignal) {
    await tolerate(this.client.send(new CreateThingGroupCommand({ thingGroupName }), { abortSignal }), ResourceAlreadyExistsException);
  }

  async addThingToGroup(thingName: string, thingGroupName: string, abortSignal: AbortSignal) {
    await this.client.send(new AddThingToThingGroupCommand({ thingName, thingGroupName }), { abortSignal });
  }

  /**
   * A policy that exists with another document (written before a topic template changed) gets the new
   * one as its default version; IoT Core keeps five versions, so the oldest non-default one goes first.
   */
  async ensurePolicy(policyName: string, policyDocument: string, abortSignal: AbortSignal): Promise<PolicyOutcome> {
    if (await tolerate(this.client.send(new CreatePolicyCommand({ policyName, policyDocument }), { abortSignal }), ResourceAlreadyExistsException)) return 'created';
    const current = await this.client.send(new GetPolicyCommand({ policyName }), { abortSignal });
    if (current.policyDocument !== undefined && samePolicy(current.policyDocument, policyDocument)) return 'unchanged';
    const { policyVersions = [] } = await this.client.send(new ListPolicyVersionsCommand({ policyName }), { abortSignal });
    if (policyVersions.length >= MAX_POLICY_VERSIONS) {
      const oldest = policyVersions
        .filter((v) => !v.isDefaultVersion)
        .sort((a, b) => (a.createDate?.getTime() ?? 0) - (b.createDate?.getTime() ?? 0) || Number(a.versionId) - Number(b.versionId))[0];
      if (oldest?.versionId) {
        await tolerate(this.client.send(new DeletePolicyVersionCommand({ policyName, policyVersionId: oldest.versionId }), { abortSignal }), ResourceNotFoundException);
      }
    }
    await this.client.send(new CreatePolicyVersionCommand({ policyName, policyDocument, setAsDefault: true }), { abortSignal });
    return 'updated';
  }

  async describePolicy(policyName: string, abortSignal: AbortSignal) {
    try {
      const p = await this.client.send(new GetPolicyCommand({ policyName }), { abortSignal });
      return p.policyArn && p.policyDocument !== undefined ? { policyArn: p.policyArn, document: p.policyDocument } : undefined;
    } catch (err) {
      if (err instanceof ResourceNotFoundException) return undefined;
      throw err;
    }
  }

  async attachPolicy(policyName: string, target: string, abortSignal: AbortSignal) {
    await this.client.send(new AttachPolicyCommand({ policyName, target }), { abortSignal });
  }

  async attachThingPrincipal(thingName: string, principal: string, abortSignal: AbortSignal) {
    await this.client.send(new AttachThingPrincipalCommand({ thingName, principal }), { abortSignal });
  }

  async dataEndpoint(abortSignal: AbortSignal): Promise<string> {
    const out = await this.client.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' }), { abortSignal });
    if (!out.endpointAddress) throw new Error('DescribeEndpoint returned no address');
    return out.endpointAddress;
  }

  setCertificateStatus(certificateId: string, newStatus: 'ACTIVE' | 'INACTIVE', abortSignal: AbortSignal): Promise<boolean> {
    return tolerate(this.client.send(new UpdateCertificateCommand({ certificateId, newStatus }), { abortSignal }), ResourceNotFoundException);
  }

  async detachPolicy(policyName: string, target: string, abortSignal: AbortSignal) {
    await tolerate(this.client.send(new DetachPolicyCommand({ policyName, target }), { abortSignal }), ResourceNotFoundException);
  }

  async detachThingPrincipal(thingName: string, principal: string, abortSignal: AbortSignal) {
    await tolerate(this.client.send(new DetachThingPrincipalCommand({ thingName, principal }), { abortSignal }), ResourceNotFoundException);
  }

  async deleteCertificate(certificateId: string, abortSignal: AbortSignal) {
    // forceDelete also removes policy attachments we may not know about (attached by an operator).
    await tolerate(this.client.send(new DeleteCertificateCommand({ certificateId, forceDelete: true }), { abortSignal }), ResourceNotFoundException);
  }

  async listCertificates(marker: string | undefined, abortSignal: AbortSignal) {
    const out = await this.client.send(new ListCertificatesCommand({ marker, pageSize: 250, ascendingOrder: false }), { abortSignal });
    return {
      certificates: (out.certificates ?? []).map((c) => ({
        certificateId: c.certificateId!,
        certificateArn: c.certificateArn!,
        status: c.status ?? 'UNKNOWN',
        createdAt: c.creationDate?.getTime() ?? 0,
      })),
      nextMarker: out.nextMarker || undefined,
    };
  }

  async describeCertificate(certificateId: string, abortSignal: AbortSignal): Promise<CertificateDescription | undefined> {
    try {
      const out = await this.client.send(new DescribeCertificateCommand({ certificateId }), { abortSignal });
      const d = out.certificateDescription;
      if (!d?.certificatePem) return undefined;
      return { certificateId, certificateArn: d.certificateArn!, status: d.status ?? 'UNKNOWN', createdAt: d.creationDate?.getTime() ?? 0, certificatePem: d.certificatePem };
    } catch (err) {
      if (err instanceof ResourceNotFoundException) return undefined;
      throw err;
    }
  }
}
