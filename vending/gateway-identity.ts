import type { Logger } from 'pino';
import type { GatewayCredentialRow, GatewayCredentialStore } from '../storage/gateway-credentials.ts';
import type { KeyCipher } from './key-cipher.ts';
import { generateKeyAndCsr, type KeyAlgorithm } from './keys.ts';
import { arnScope, eventPolicyDocument } from './policy.ts';
import type { VendingProvider } from './provider.ts';
import { unsealedCredentials, type DeviceCredentials } from './vendor.ts';

export interface GatewayIdentityOptions {
  /** This gateway's name (events.gateway). */
  gateway: string;
  thingName: string;
  policyName: string;
  /** The event topics' root, `{topicPrefix}/{gateway}/events`: the policy grants publishing under it only. */
  eventTopicRoot: string;
  keyAlgorithm: KeyAlgorithm;
  store: GatewayCredentialStore;
  cipher: KeyCipher;
  provider: VendingProvider;
  /** An IoT Core call within the vendor's quotas (Vendor.callApi). */
  call<T>(api: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  log: Logger;
}

/**
 * The gateway's own thing, certificate and policy, vended the way a device's are: the key pair is
 * made here and sealed under the master key before anything is asked of IoT Core, every step is
 * recorded once done (key → csr_sent → certificate → ready) and a restart resumes at the step it
 * reached; the calls after CreateCertificateFromCsr are idempotent. Its policy allows connecting as
 * that thing and publishing on its event topics, nothing else.
 */
export class GatewayIdentity {
  private vending: Promise<DeviceCredentials> | undefined;

  constructor(private readonly o: GatewayIdentityOptions) {}

  /** The key the gateway's private key is sealed for (AES-GCM additional data), apart from every IMSI. */
  private get owner(): string {
    return `gateway:${this.o.gateway}`;
  }

  /** The gateway's credentials, vending them first if needed (once, however many callers ask). */
  ensure(): Promise<DeviceCredentials> {
    if (!this.vending) {
      this.vending = this.vend();
      this.vending.catch(() => (this.vending = undefined));
    }
    return this.vending;
  }

  private async vend(): Promise<DeviceCredentials> {
    const { store, gateway } = this.o;
    let row = await store.get(gateway);
    if (!row) {
      const { privateKeyPem, csrPem } = await generateKeyAndCsr(this.o.thingName, this.o.keyAlgorithm);
      await store.create({ gateway, thingName: this.o.thingName, keyAlg: this.o.keyAlgorithm, keyEnc: this.o.cipher.encrypt(Buffer.from(privateKeyPem), this.owner), csrPem });
      row = (await store.get(gateway))!;
    }
    if (row.step === 'key' || row.step === 'csr_sent') row = await this.certificate(row);
    if (row.step === 'certificate') row = await this.attach(row);
    // Vended before: the policy follows the configured event topics (once per start, GetPolicy only when unchanged).
    else await this.o.call('CreatePolicy', (s) => this.o.provider.ensurePolicy(this.o.policyName, this.policyOf(row!), s));
    return this.credentialsOf(row);
  }

  private policyOf(row: GatewayCredentialRow): string {
    return eventPolicyDocument({ ...arnScope(row.certArn!), thingName: row.thingName, eventTopicRoot: this.o.eventTopicRoot });
  }

  /** CreateCertificateFromCsr; the step is recorded as begun first, so a restart knows one may exist. */
  private async certificate(row: GatewayCredentialRow): Promise<GatewayCredentialRow> {
    const { store, gateway } = this.o;
    if (row.step === 'key') await store.advance(gateway, 'key', 'csr_sent');
    else this.o.log.warn({ gateway }, 'resuming the gateway certificate: one created before the restart, if any, stays unattached (no policy, no thing)');
    const cert = await this.o.call('CreateCertificateFromCsr', (s) => this.o.provider.createCertificate(row.csrPem, s));
    if (!(await store.advance(gateway, 'csr_sent', 'certificate', { certId: cert.certificateId, certArn: cert.certificateArn, certPem: cert.certificatePem }))) {
      throw new Error(`gateway ${gateway}: its credentials changed while vending`);
    }
    return (await store.get(gateway))!;
  }

  /** Thing, event policy and both attachments (all idempotent), then in use. */
  private async attach(row: GatewayCredentialRow): Promise<GatewayCredentialRow> {
    const { provider, call, store, gateway, thingName, policyName } = this.o;
    const document = this.policyOf(row);
    await call('CreateThing', (s) => provider.ensureThing(thingName, { role: 'simbridge-gateway' }, undefined, s));
    await call('CreatePolicy', (s) => provider.ensurePolicy(policyName, document, s));
    await call('AttachPolicy', (s) => provider.attachPolicy(policyName, row.certArn!, s));
    await call('AttachThingPrincipal', (s) => provider.attachThingPrincipal(thingName, row.certArn!, s));
    await store.advance(gateway, 'certificate', 'ready', { policyName });
    this.o.log.info({ gateway, thing: thingName, certificateId: row.certId }, 'gateway identity vended');
    return (await store.get(gateway))!;
  }

  private credentialsOf(row: GatewayCredentialRow): DeviceCredentials {
    return unsealedCredentials(row, this.o.cipher, this.owner);
  }
}
