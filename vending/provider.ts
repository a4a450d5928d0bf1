/** What the vending state machine needs from a certificate authority + device registry (IoT Core or a stand-in). */
export interface VendingProvider {
  /** Signs the CSR and registers the certificate, ACTIVE. */
  createCertificate(csrPem: string): Promise<{ certificateId: string; certificateArn: string; certificatePem: string }>;
  /** Creates the thing, or accepts it when it already exists. */
  ensureThing(thingName: string, attributes: Record<string, string>): Promise<void>;
  /** Creates the policy once; an existing one is left as it is. */
  ensurePolicy(policyName: string, document: string): Promise<void>;
  attachPolicy(policyName: string, certificateArn: string): Promise<void>;
  attachThingPrincipal(thingName: string, certificateArn: string): Promise<void>;
  /** Host name of the MQTT data endpoint (iot:Data-ATS). */
  dataEndpoint(): Promise<string>;
  /** Marks a certificate INACTIVE so the data plane refuses it. */
  deactivateCertificate(certificateId: string): Promise<void>;
}
