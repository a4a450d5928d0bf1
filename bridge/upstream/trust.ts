import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';

/**
 * IoT Core's ATS endpoints chain to Amazon Root CA 1–4, cross-signed by Starfield Services Root G2.
 * Trusting only these (rather than the whole system store) pins the upstream to Amazon's hierarchy.
 */
const AMAZON_TRUST_SERVICES = /CN=(Amazon Root CA [1-4]|Starfield Services Root Certificate Authority - G2)$/m;

/** The CA bundle upstream sessions trust: the configured file, or the Amazon Trust Services roots. */
export function upstreamTrust(caFile: string | undefined): string {
  if (caFile) return readFileSync(caFile, 'utf8');
  const roots = rootCertificates.filter((pem) => AMAZON_TRUST_SERVICES.test(new X509Certificate(pem).subject));
  if (roots.length === 0) throw new Error('no Amazon Trust Services root in this Node.js build; set upstream.caFile');
  return roots.join('\n');
}

/**
 * aws-crt's TLS library loads the system trust store (a ~200 KB PEM bundle) into every client TLS
 * context before the pinned bundle replaces it: ~7 ms of blocked event loop per upstream connect,
 * most of the cost of opening a session. Every context here pins its CA, so that load is pointed at an
 * empty file, whatever the environment set it to. Only OpenSSL-style loaders read this variable;
 * Node's own TLS (the AWS API clients) keeps its bundled roots.
 */
export function skipSystemTrustStoreLoad(): void {
  process.env.SSL_CERT_FILE = '/dev/null';
}
