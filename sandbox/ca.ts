// The sandbox root CA: one EC P-256 key that signs device certificates (from
// CSRs, as CreateCertificateFromCsr does) and the data plane's TLS server
// certificate. Kept in dataDir so certificates vended before a restart still
// verify after it.
import { createHash, webcrypto } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from './x509.ts';

// Passed explicitly to every x509 call instead of x509.cryptoProvider.set():
// the sandbox may share a process with the gateway and must not change its globals.
const crypto = webcrypto as unknown as Crypto;
const EC_KEY: EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGNING: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
// Tolerates small clock differences between the sandbox and whoever verifies.
const BACKDATE_MS = 60_000;
const DAY_MS = 86_400_000;

export interface IssuedCertificate {
  pem: string;
  /** Lowercase hex SHA-256 of the DER, the way IoT Core names certificates. */
  certificateId: string;
  /** Subject DN as text, e.g. `CN=thing-1`. */
  subject: string;
  notBefore: Date;
  notAfter: Date;
}

export interface ServerIdentity {
  certFile: string;
  keyFile: string;
  certPem: string;
  keyPem: string;
}

export class CertificateAuthority {
  readonly certFile: string;
  readonly certPem: string;
  private readonly cert: x509.X509Certificate;
  private readonly key: CryptoKey;

  private constructor(certFile: string, cert: x509.X509Certificate, key: CryptoKey) {
    this.certFile = certFile;
    this.cert = cert;
    this.certPem = cert.toString('pem') + '\n';
    this.key = key;
  }

  /** Loads the CA from dir, or creates it on first start. */
  static async open(dir: string): Promise<CertificateAuthority> {
    const certFile = join(dir, 'ca.pem');
    const keyFile = join(dir, 'ca.key');
    if (existsSync(certFile) || existsSync(keyFile)) {
      if (!existsSync(certFile) || !existsSync(keyFile)) {
        throw new Error(`sandbox CA in ${dir} is incomplete: need both ca.pem and ca.key (remove both to start a new CA)`);
      }
      const cert = new x509.X509Certificate(readFileSync(certFile, 'utf8'));
      const key = await importPrivateKey(readFileSync(keyFile, 'utf8'));
      return new CertificateAuthority(certFile, cert, key);
    }
    const keys = (await crypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned(
      {
        serialNumber: randomSerial(),
        name: 'CN=simbridge sandbox root CA, O=simbridge sandbox',
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + 20 * 365 * DAY_MS),
        keys,
        signingAlgorithm: SIGNING,
        extensions: [
          new x509.BasicConstraintsExtension(true, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
        ],
      },
      crypto,
    );
    // Key first: a crash between the two writes leaves a key without a cert,
    // which the next start reports instead of silently minting a second CA.
    writeAtomic(keyFile, await exportPrivateKey(keys.privateKey), 0o600);
    writeAtomic(certFile, cert.toString('pem') + '\n', 0o644);
    return new CertificateAuthority(certFile, cert, keys.privateKey);
  }

  /**
   * Signs a PEM CSR like CreateCertificateFromCsr: subject and public key come
   * from the CSR, everything else from the CA. Throws CsrError when the CSR
   * cannot be parsed or its self-signature does not verify.
   */
  /** Signs a CSR, valid for validityDays, or until a fixed date (IoT Core: 2049-12-31 23:59:59 UTC). */
  async signCsr(csrPem: string, validityDays: number | Date): Promise<IssuedCertificate> {
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
    } catch (err) {
      throw new CsrError(`the CSR could not be parsed: ${(err as Error).message}`);
    }
    let valid = false;
    try {
      valid = await csr.verify(crypto);
    } catch (err) {
      throw new CsrError(`the CSR signature could not be checked: ${(err as Error).message}`);
    }
    if (!valid) throw new CsrError('the CSR signature does not verify');

    const now = Date.now();
    const notBefore = new Date(now - BACKDATE_MS);
    const notAfter = validityDays instanceof Date ? validityDays : new Date(now + validityDays * DAY_MS);
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: randomSerial(),
        subject: csr.subjectName,
        issuer: this.cert.subjectName,
        notBefore,
        notAfter,
        publicKey: csr.publicKey,
        signingKey: this.key,
        signingAlgorithm: SIGNING,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(deviceKeyUsage(csr.publicKey), true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
          await x509.SubjectKeyIdentifierExtension.create(csr.publicKey, false, crypto),
          await x509.AuthorityKeyIdentifierExtension.create(this.cert.publicKey, false, crypto),
        ],
      },
      crypto,
    );
    return { pem: cert.toString('pem') + '\n', certificateId: certificateIdOf(cert.rawData), subject: cert.subject, notBefore, notAfter };
  }

  /**
   * Returns the data plane's TLS server identity, reusing the files in dir when
   * they are signed by this CA, cover all the wanted SANs and are not about to
   * expire; otherwise issues a new one.
   */
  async serverIdentity(dir: string, dnsNames: string[], ips: string[]): Promise<ServerIdentity> {
    const certFile = join(dir, 'server.pem');
    const keyFile = join(dir, 'server.key');
    if (existsSync(certFile) && existsSync(keyFile)) {
      const certPem = readFileSync(certFile, 'utf8');
      if (await this.isUsableServerCert(certPem, dnsNames, ips)) {
        return { certFile, keyFile, certPem, keyPem: readFileSync(keyFile, 'utf8') };
      }
    }
    const keys = (await crypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: randomSerial(),
        subject: 'CN=localhost, O=simbridge sandbox',
        issuer: this.cert.subjectName,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + 825 * DAY_MS),
        publicKey: keys.publicKey,
        signingKey: this.key,
        signingAlgorithm: SIGNING,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
          new x509.SubjectAlternativeNameExtension([
            ...dnsNames.map((value) => ({ type: 'dns' as const, value })),
            ...ips.map((value) => ({ type: 'ip' as const, value })),
          ]),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
          await x509.AuthorityKeyIdentifierExtension.create(this.cert.publicKey, false, crypto),
        ],
      },
      crypto,
    );
    const keyPem = await exportPrivateKey(keys.privateKey);
    const certPem = cert.toString('pem') + '\n';
    writeAtomic(keyFile, keyPem, 0o600);
    writeAtomic(certFile, certPem, 0o644);
    return { certFile, keyFile, certPem, keyPem };
  }

  private async isUsableServerCert(pem: string, dnsNames: string[], ips: string[]): Promise<boolean> {
    try {
      const cert = new x509.X509Certificate(pem);
      if (cert.notAfter.getTime() - Date.now() < 30 * DAY_MS) return false;
      if (!(await cert.verify({ publicKey: this.cert.publicKey, signatureOnly: true }, crypto))) return false;
      const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
      const names = new Set((san?.names.toJSON() ?? []).map((n) => `${n.type}:${n.value}`));
      return [...dnsNames.map((d) => `dns:${d}`), ...ips.map((i) => `ip:${i}`)].every((n) => names.has(n));
    } catch {
      return false;
    }
  }
}

/** The CSR was unreadable or not self-consistent (→ InvalidRequestException). */
export class CsrError extends Error {}

/** IoT Core's certificate id: lowercase hex SHA-256 of the certificate's DER. */
export function certificateIdOf(der: ArrayBuffer | Uint8Array): string {
  return createHash('sha256').update(new Uint8Array(der)).digest('hex');
}

// keyEncipherment only makes sense for RSA keys (TLS RSA key exchange).
function deviceKeyUsage(key: x509.PublicKey): x509.KeyUsageFlags {
  const rsa = key.algorithm.name.startsWith('RSA');
  return x509.KeyUsageFlags.digitalSignature | (rsa ? x509.KeyUsageFlags.keyEncipherment : 0);
}

function randomSerial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0] = bytes[0]! & 0x7f; // a positive INTEGER, as RFC 5280 requires
  return Buffer.from(bytes).toString('hex');
}

async function exportPrivateKey(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY') + '\n';
}

async function importPrivateKey(pem: string): Promise<CryptoKey> {
  return crypto.subtle.importKey('pkcs8', x509.PemConverter.decodeFirst(pem), EC_KEY, false, ['sign']);
}

function writeAtomic(file: string, data: string, mode: number): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode });
  renameSync(tmp, file);
}
