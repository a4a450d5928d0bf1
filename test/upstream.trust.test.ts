import { X509Certificate } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { upstreamTrust } from '../bridge/upstream/trust.ts';

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
});
