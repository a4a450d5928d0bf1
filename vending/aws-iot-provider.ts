import {
  AttachPolicyCommand,
  AttachThingPrincipalCommand,
  CreateCertificateFromCsrCommand,
  CreatePolicyCommand,
  CreateThingCommand,
  DescribeEndpointCommand,
  IoTClient,
  UpdateCertificateCommand,
} from '@aws-sdk/client-iot';
import type { VendingProvider } from './provider.ts';

export interface AwsIotProviderOptions {
  region: string;
  /** Control-plane endpoint override; the sandbox is this same provider pointed elsewhere. */
  endpoint?: string;
  /** Static credentials; absent = the default AWS credential chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** Vending against AWS IoT Core through @aws-sdk/client-iot. */
export class AwsIotProvider implements VendingProvider {
  private readonly client: IoTClient;
  private endpointHost?: Promise<string>;

  constructor(opts: AwsIotProviderOptions) {
    // Our own retry loop paces retries against the quotas; the SDK's standard retries stay on for blips.
    this.client = new IoTClient({ region: opts.region, endpoint: opts.endpoint, credentials: opts.credentials });
  }

  async createCertificate(csrPem: string) {
    const out = await this.client.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: csrPem, setAsActive: true }));
    if (!out.certificateId || !out.certificateArn || !out.certificatePem) throw new Error('CreateCertificateFromCsr returned no certificate');
    return { certificateId: out.certificateId, certificateArn: out.certificateArn, certificatePem: out.certificatePem };
  }

  async ensureThing(thingName: string, attributes: Record<string, string>) {
    try {
      await this.client.send(new CreateThingCommand({ thingName, attributePayload: { attributes } }));
    } catch (err) {
      // CreateThing is idempotent for identical input; a thing that exists with other attributes is still ours.
      if ((err as Error).name !== 'ResourceAlreadyExistsException') throw err;
    }
  }

  async ensurePolicy(policyName: string, document: string) {
    try {
      await this.client.send(new CreatePolicyCommand({ policyName, policyDocument: document }));
    } catch (err) {
      if ((err as Error).name !== 'ResourceAlreadyExistsException') throw err;
    }
  }

  async attachPolicy(policyName: string, certificateArn: string) {
    await this.client.send(new AttachPolicyCommand({ policyName, target: certificateArn }));
  }

  async attachThingPrincipal(thingName: string, certificateArn: string) {
    await this.client.send(new AttachThingPrincipalCommand({ thingName, principal: certificateArn }));
  }

  dataEndpoint(): Promise<string> {
    this.endpointHost ??= this.client.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' })).then((out) => {
      if (!out.endpointAddress) throw new Error('DescribeEndpoint returned no address');
      return out.endpointAddress;
    });
    this.endpointHost.catch(() => (this.endpointHost = undefined));
    return this.endpointHost;
  }

  async deactivateCertificate(certificateId: string) {
    await this.client.send(new UpdateCertificateCommand({ certificateId, newStatus: 'INACTIVE' }));
  }
}
