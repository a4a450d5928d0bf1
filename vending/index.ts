import type { Logger } from 'pino';
import type { VendingConfig } from '../config/vending.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { CredentialStore } from '../storage/credentials.ts';
import type { SimRegistry } from '../storage/sims.ts';
import { AwsIotProvider } from './aws-iot-provider.ts';
import type { KeyCipher } from './key-cipher.ts';
import type { VendingProvider } from './provider.ts';
import { Vendor, type VendorHooks } from './vendor.ts';

export type { VendingConfig } from '../config/vending.ts';

export interface VendingDeps extends VendorHooks {
  sims: SimRegistry;
  credentials: CredentialStore;
  cipher: KeyCipher;
  audit: AuditStore;
  log: Logger;
  /** Policy name and upstream topic templates of a SIM group. */
  policyFor(group: string): { name: string; topicTemplates: string[] };
  /** False when the upstream endpoint is configured, so DescribeEndpoint is never needed. Default true. */
  needsDataEndpoint?: boolean;
  /** Resume unfinished work and run the background jobs (retirement, orphan sweep, rotation). Default true. */
  background?: boolean;
}

/** The provider a config names. Only `aws-iot` exists yet (the sandbox is aws-iot at another endpoint). */
export function createProvider(config: VendingConfig): VendingProvider {
  switch (config.provider) {
    case 'aws-iot':
      return new AwsIotProvider({
        region: config.region,
        endpoint: config.endpoint,
        credentials: config.credentials,
        requestTimeoutMs: config.callTimeoutMs,
      });
  }
}

/** Builds the vending service from its config section and starts it. */
export function createVending(config: VendingConfig, deps: VendingDeps): { vendor: Vendor; provider: { dataEndpoint(signal?: AbortSignal): Promise<string> } } {
  const provider = createProvider(config);
  const vendor = new Vendor({ ...deps, config, provider });
  if (deps.background !== false) vendor.start();
  // The cached, paced DescribeEndpoint; a caller's signal bounds only its own wait.
  return { vendor, provider: { dataEndpoint: (signal) => abortable(vendor.dataEndpoint(), signal) } };
}

function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
