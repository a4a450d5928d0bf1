import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as tls from 'node:tls';

/**
 * IoT Core's ATS endpoints chain to Amazon Root CA 1–4, cross-signed by Starfield Services Root G2.
 * Trusting only these (rather than the whole system store) pins the upstream to Amazon's hierarchy.
 */
const AMAZON_TRUST_SERVICES = /CN=(Amazon Root CA [1-4]|Starfield Services Root Certificate Authority - G2)$/m;

/** The CA bundle upstream sessions trust: the configured file, or the Amazon Trust Services roots. */
export function upstreamTrust(caFile: string | undefined): string {
  if (caFile) return readFileSync(caFile, 'utf8');
  const roots = tls.rootCertificates.filter((pem) => AMAZON_TRUST_SERVICES.test(new X509Certificate(pem).subject));
  if (roots.length === 0) throw new Error('no Amazon Trust Services root in this Node.js build; set upstream.caFile');
  return roots.join('\n');
}

/** What a session's TLS context is given as its `ca`, for the bundle it must chain to (none: the thread's default). */
export type ContextTrust = (caPem: string) => string | undefined;

/** Every context builds a certificate store of its own from the bundle: on any thread, on any Node. */
export const perContextTrust: ContextTrust = (caPem) => caPem;

/**
 * For a thread whose only TLS clients are upstream sessions (a connection thread): the bundle becomes
 * the thread's default trust, which every context built without `ca` shares, instead of each context
 * building a store of its own. With the five Amazon roots and a session's certificate and key, on
 * Node 22 (bench tls-contexts): 29 KB and 0.31 ms per context, against 60 KB and 0.56 ms. The default
 * replaces everything else the thread trusted (bundled roots, NODE_EXTRA_CA_CERTS), so the pin is as
 * strict as `ca`. Node 22.19 and later (tls.setDefaultCACertificates); older Nodes keep a store per
 * context.
 */
export function threadDefaultTrust(): ContextTrust {
  const setDefault = (tls as { setDefaultCACertificates?: typeof tls.setDefaultCACertificates }).setDefaultCACertificates;
  if (!setDefault) return perContextTrust;
  let current: string | undefined;
  return (caPem) => {
    if (caPem === current) return undefined;
    const certs = caPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
    // Nothing to make the default of: the context is given the text, and refuses it as it always did.
    if (!certs) return caPem;
    setDefault(certs);
    current = caPem;
    return undefined;
  };
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
