import { X509Certificate } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { threadDefaultTrust, upstreamTrust } from '../bridge/upstream/trust.ts';

const subjects = (bundle: string) =>
  bundle.split(/(?<=-----END CERTIFICATE-----)\n?/).filter((p) => p.trim()).map((p) => new X509Certificate(p).subject.split('\n').find((l) => l.startsWith('CN='))!);

describe('upstream trust', () => {
  it('pins the Amazon Trust Services roots when no CA file is configured', () => {
    const cns = subjects(upstreamTrust(undefined));
    expect(cns).toContain('CN=Amazon Root CA 1');
    expect(cns).toContain('CN=Amazon Root CA 3');
    expect(cns.every((cn) => /Amazon Root CA [1-4]|Starfield Services Root Certificate Authority - G2/.test(cn))).toBe(true);
  });

  it('uses the configured CA file as it is', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'trust-')), 'ca.pem');
    const pem = upstreamTrust(undefined).split('\n-----BEGIN')[0]! + '\n';
    writeFileSync(file, pem);
    expect(upstreamTrust(file)).toBe(pem);
  });

  it("makes the bundle the thread's whole default trust where Node can (22.19+), else gives it to each context", () => {
    const bundle = upstreamTrust(undefined);
    const trust = threadDefaultTrust();
    if (!tls.setDefaultCACertificates) {
      expect(trust(bundle)).toBe(bundle);
      return;
    }
    const before = tls.getCACertificates('default');
    try {
      expect(trust(bundle)).toBeUndefined();
      const roots = tls.getCACertificates('default');
      expect(roots.length).toBe(subjects(bundle).length);
      expect(roots.map((pem) => new X509Certificate(pem).fingerprint256).sort()).toEqual(
        bundle.split(/(?<=-----END CERTIFICATE-----)\n?/).filter((p) => p.trim()).map((p) => new X509Certificate(p).fingerprint256).sort(),
      );
      // Text with no certificate in it is left to the context, which refuses it as before.
      expect(trust('not a certificate')).toBe('not a certificate');
    } finally {
      tls.setDefaultCACertificates(before);
    }
  });
});
