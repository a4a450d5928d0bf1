// The IoT Core provider against the sandbox control plane over HTTP: what a repeated call answers is
// recognised by the SDK's error class, so every method is safe to run twice.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Sandbox, startSandbox } from '../sandbox/index.ts';
import { AwsIotProvider } from '../vending/aws-iot-provider.ts';

let dir: string;
let sb: Sandbox;
let provider: AwsIotProvider;
const signal = () => AbortSignal.timeout(10_000);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'simbridge-provider-'));
  sb = await startSandbox({ dataDir: dir, controlPort: 0, dataPort: 0, observerPort: 0 });
  provider = new AwsIotProvider({ region: 'us-east-1', endpoint: sb.controlEndpoint, credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' }, requestTimeoutMs: 10_000 });
});

afterAll(async () => {
  provider?.destroy();
  await sb?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('AwsIotProvider', () => {
  it('absorbs "already exists" when creating a thing group, a thing (even with other attributes) or a policy twice', async () => {
    await provider.ensureThingGroup('fleet', signal());
    await expect(provider.ensureThingGroup('fleet', signal())).resolves.toBeUndefined();
    await provider.ensureThing('sim-001010000000001', { group: 'a' }, undefined, signal());
    await expect(provider.ensureThing('sim-001010000000001', { group: 'b' }, undefined, signal())).resolves.toBeUndefined();
    const doc = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'iot:Connect', Resource: '*' }] });
    await expect(provider.ensurePolicy('p', doc, signal())).resolves.toBe('created');
    // The same document again is left as it is (another one would become a new default version).
    await expect(provider.ensurePolicy('p', doc, signal())).resolves.toBe('unchanged');
  });

  it('absorbs "not found" for a certificate already gone, and still throws what it does not expect', async () => {
    const gone = 'f'.repeat(64);
    await expect(provider.setCertificateStatus(gone, 'INACTIVE', signal())).resolves.toBe(false);
    await expect(provider.describeCertificate(gone, signal())).resolves.toBeUndefined();
    await expect(provider.deleteCertificate(gone, signal())).resolves.toBeUndefined();
    // Not found where it is not expected (attaching to a thing that does not exist) is not absorbed.
    await expect(provider.attachThingPrincipal('sim-nobody', `arn:aws:iot:us-east-1:000000000000:cert/${gone}`, signal())).rejects.toThrow();
  });
});
