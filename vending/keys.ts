import 'reflect-metadata'; // @peculiar/x509 needs the Reflect metadata API before it loads
import * as x509 from '@peculiar/x509';
import { createHash, createPublicKey, webcrypto, X509Certificate, type KeyObject } from 'node:crypto';

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

/**
 * Generates a key pair locally and a CSR with subject CN = the thing name. The key never leaves
 * simbridge; the fingerprint of its public key later recognises certificates issued for it.
 */
export async function generateKeyAndCsr(thingName: string, alg: KeyAlgorithm): Promise<{ privateKeyPem: string; csrPem: string; fingerprint: string }> {
  const spec = algorithms[alg];
  const keys = (await webcrypto.subtle.generateKey(spec.generate, true, ['sign', 'verify'])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [thingName] }],
    keys: keys as unknown as globalThis.CryptoKeyPair,
    signingAlgorithm: spec.sign,
  });
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  const privateKeyPem = pem('PRIVATE KEY', pkcs8);
  return { privateKeyPem, csrPem: csr.toString('pem'), fingerprint: fingerprint(createPublicKey(privateKeyPem)) };
}

/**
 * SHA-256 over the public key's numbers (JWK members), not its DER: a CA may re-encode the
 * SubjectPublicKeyInfo it copies from the CSR, the numbers stay the same.
 */
export function fingerprint(key: KeyObject): string {
  const jwk = key.export({ format: 'jwk' });
  const parts = jwk.kty === 'EC' ? [jwk.kty, jwk.crv, jwk.x, jwk.y] : [jwk.kty, jwk.n, jwk.e];
  return createHash('sha256').update(parts.join('.')).digest('hex');
}

export function certificateFingerprint(certificatePem: string): string {
  return fingerprint(new X509Certificate(certificatePem).publicKey);
}

/** Fingerprint of the certificate's key and its expiry (ms since epoch), from one parse. */
export function certificateFacts(certificatePem: string): { fingerprint: string; notAfter: number } {
  const cert = new X509Certificate(certificatePem);
  return { fingerprint: fingerprint(cert.publicKey), notAfter: Date.parse(cert.validTo) };
}

export function csrFingerprint(csrPem: string): string {
  const spki = new x509.Pkcs10CertificateRequest(csrPem).publicKey.rawData;
  return fingerprint(createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }));
}

/** Expiry of a PEM certificate, ms since epoch. */
export function certificateNotAfter(certificatePem: string): number {
  return Date.parse(new X509Certificate(certificatePem).validTo);
}
