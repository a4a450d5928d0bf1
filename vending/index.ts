import type { Logger } from 'pino';
import type { z } from 'zod';
import type { vendingSection } from '../config/vending.ts';
import type { AuditLog } from '../storage/audit.ts';
import type { Db } from '../storage/db.ts';
import { AwsIotProvider } from './aws-iot-provider.ts';
import type { KeyCipher } from './key-cipher.ts';
import type { VendingProvider } from './provider.ts';
import { Vendor } from './vendor.ts';

export type VendingConfig = z.infer<typeof vendingSection>;

export interface VendingDeps {
  db: Db;
  cipher: KeyCipher;
  audit: AuditLog;
  log: Logger;
  /** Policy name and upstream topic templates of a SIM group. */
  policyFor(group: string): { name: string; topicTemplates: string[] };
  onVended?(seconds: number): void;
  onFailure?(err: Error): void;
}

/** Builds the vending service from its config section: the provider and the state machine over it. */
export function createVending(config: VendingConfig, deps: VendingDeps): { vendor: Vendor; provider: VendingProvider } {
  const provider = new AwsIotProvider({ region: config.region, endpoint: config.endpoint, credentials: config.credentials });
  const vendor = new Vendor({
    ...deps,
    provider,
    keyAlgorithm: 'ec-p256',
    retryDelayMs: config.retryDelayMs,
    retryMaxDelayMs: config.retryMaxDelayMs,
  });
  return { vendor, provider };
}
