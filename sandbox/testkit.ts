// Helpers for tests that talk to the sandbox: a device key + CSR made the way
// a vending client would (WebCrypto EC P-256, PKCS#10 via @peculiar/x509), and
// a least-privilege IoT policy for one thing per client id. Not used by the
// sandbox itself.
import { webcrypto } from 'node:crypto';
import {
  AttachPolicyCommand,
  AttachThingPrincipalCommand,
  CreateCertificateFromCsrCommand,
  CreatePolicyCommand,
  CreateThingCommand,
  IoTClient,
  ResourceAlreadyExistsException,
} from '@aws-sdk/client-iot';
import * as x509 from './x509.ts';

const crypto = webcrypto as unknown as Crypto;

export interface DeviceKey {
  keyPem: string;
  csrPem: string;
}

/** A fresh EC P-256 key and a CSR with subject CN=commonName. */
export async function makeDeviceCsr(commonName: string): Promise<DeviceKey> {
  const keys = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    { name: `CN=${commonName}`, keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } },
    crypto,
  );
  const pkcs8 = await crypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { keyPem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') + '\n', csrPem: csr.toString('pem') + '\n' };
}

/**
 * A thing may connect only as itself, only with a certificate attached to it,
 * and publish / subscribe / receive only under `things/<thing>/...`.
 */
export function thingPolicy(region: string, accountId: string, partition = 'aws'): string {
  const arn = `arn:${partition}:iot:${region}:${accountId}`;
  const thing = '${iot:Connection.Thing.ThingName}';
  return JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      {
        Effect: 'Allow',
        Action: 'iot:Connect',
        Resource: `${arn}:client/${thing}`,
        Condition: { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } },
      },
      { Effect: 'Allow', Action: ['iot:Publish', 'iot:Receive'], Resource: `${arn}:topic/things/${thing}/*` },
      { Effect: 'Allow', Action: 'iot:Subscribe', Resource: `${arn}:topicfilter/things/${thing}/*` },
    ],
  });
}

/** An IoTClient for the sandbox's control plane (credentials are required by the SDK, never checked). */
export function sandboxIotClient(endpoint: string, opts: { region?: string; maxAttempts?: number } = {}): IoTClient {
  return new IoTClient({
    endpoint,
    region: opts.region ?? 'us-east-1',
    credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' },
    maxAttempts: opts.maxAttempts ?? 1,
  });
}

export interface VendedThing {
  thingName: string;
  certificateId: string;
  certificateArn: string;
  certPem: string;
  keyPem: string;
}

/**
 * The whole vending flow through the control plane: key + CSR, certificate
 * (ACTIVE), thing, policy (created once, reused), attachments.
 */
export async function vendThing(
  iot: IoTClient,
  thingName: string,
  opts: { policyName?: string; policyDocument?: string; attachThing?: boolean; region?: string; accountId?: string } = {},
): Promise<VendedThing> {
  const policyName = opts.policyName ?? 'sandbox-thing-policy';
  const { keyPem, csrPem } = await makeDeviceCsr(thingName);
  const cert = await iot.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: csrPem, setAsActive: true }));
  await iot.send(new CreateThingCommand({ thingName }));
  try {
    const doc = opts.policyDocument ?? thingPolicy(opts.region ?? 'us-east-1', opts.accountId ?? '123456789012');
    await iot.send(new CreatePolicyCommand({ policyName, policyDocument: doc }));
  } catch (err) {
    if (!(err instanceof ResourceAlreadyExistsException)) throw err;
  }
  await iot.send(new AttachPolicyCommand({ policyName, target: cert.certificateArn! }));
  if (opts.attachThing !== false) {
    await iot.send(new AttachThingPrincipalCommand({ thingName, principal: cert.certificateArn! }));
  }
  return { thingName, certificateId: cert.certificateId!, certificateArn: cert.certificateArn!, certPem: cert.certificatePem!, keyPem };
}
