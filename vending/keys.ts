import 'reflect-metadata'; // @peculiar/x509 needs the Reflect metadata API before it loads
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export type KeyAlgorithm = 'ec-p256' | 'rsa-2048';

const algorithms = {
  'ec-p256': {
    generate: { name: 'ECDSA', namedCurve: 'P-256' } as EcKeyGenParams,
    sign: { name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams,
  },
  'rsa-2048': {
    generate: { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' } as RsaHashedKeyGenParams,
    sign: { name: 'RSASSA-PKCS1-v1_5' } as Algorithm,
  },
};

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${b64.trimEnd()}\n-----END ${label}-----\n`;
}

/** Generates a key pair locally and a CSR with subject CN = the thing name. The key never leaves simbridge. */
export async function generateKeyAndCsr(thingName: string, alg: KeyAlgorithm): Promise<{ privateKeyPem: string; csrPem: string }> {
  const spec = algorithms[alg];
  const keys = (await webcrypto.subtle.generateKey(spec.generate, true, ['sign', 'verify'])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [thingName] }],
    keys: keys as unknown as globalThis.CryptoKeyPair,
    signingAlgorithm: spec.sign,
  });
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { privateKeyPem: pem('PRIVATE KEY', pkcs8), csrPem: csr.toString('pem') };
}
