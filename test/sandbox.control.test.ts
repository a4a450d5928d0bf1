// The sandbox control plane driven by the real @aws-sdk/client-iot over HTTP.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  CreatePolicyVersionCommand,
  DeletePolicyVersionCommand,
  ListPolicyVersionsCommand,
  SetDefaultPolicyVersionCommand,
  AttachPolicyCommand,
  AttachThingPrincipalCommand,
  CreateCertificateFromCsrCommand,
  CreatePolicyCommand,
  CreateThingCommand,
  DeleteCertificateCommand,
  DeletePolicyCommand,
  DeleteThingCommand,
  DescribeCertificateCommand,
  DescribeEndpointCommand,
  DescribeThingCommand,
  DetachPolicyCommand,
  DetachThingPrincipalCommand,
  GetPolicyCommand,
  type IoTClient,
  ListAttachedPoliciesCommand,
  ListCertificatesCommand,
  ListPrincipalThingsCommand,
  ListTargetsForPolicyCommand,
  ListThingGroupsCommand,
  ListThingPrincipalsCommand,
  ResourceNotFoundException,
  UpdateCertificateCommand,
} from '@aws-sdk/client-iot';
import { type Sandbox, startSandbox } from '../sandbox/index.ts';
import { makeDeviceCsr, sandboxIotClient, thingPolicy, vendThing } from '../sandbox/testkit.ts';
import * as x509 from '../sandbox/x509.ts';

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'simbridge-sandbox-'));
  dirs.push(d);
  return d;
};
const start = (dataDir: string) => startSandbox({ dataDir, controlPort: 0, dataPort: 0, observerPort: 0 });

/** The error a call throws (fails the test if it resolves). */
async function failure(p: Promise<unknown>): Promise<Error & { $metadata?: { httpStatusCode?: number; attempts?: number } }> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the call to fail');
}

let sb: Sandbox;
let iot: IoTClient;

beforeAll(async () => {
  sb = await start(tempDir());
  iot = sandboxIotClient(sb.controlEndpoint);
});

afterAll(async () => {
  iot?.destroy();
  await sb?.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

beforeEach(() => sb.faults.reset());

describe('vending flow', () => {
  it('creates a certificate from a CSR, a thing, a least-privilege policy and the attachments', async () => {
    const { csrPem } = await makeDeviceCsr('meter-1');
    const cert = await iot.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: csrPem, setAsActive: true }));

    // Named like IoT Core: SHA-256 of the DER; signed by the sandbox CA with the CSR's subject.
    const issued = new x509.X509Certificate(cert.certificatePem!);
    expect(cert.certificateId).toBe(createHash('sha256').update(new Uint8Array(issued.rawData)).digest('hex'));
    expect(cert.certificateArn).toBe(`arn:aws:iot:us-east-1:123456789012:cert/${cert.certificateId}`);
    expect(issued.subject).toBe('CN=meter-1');
    const ca = new x509.X509Certificate(sb.caPem);
    expect(await issued.verify({ publicKey: ca.publicKey, signatureOnly: true }, globalThis.crypto)).toBe(true);

    const thing = await iot.send(new CreateThingCommand({ thingName: 'meter-1', attributePayload: { attributes: { imsi: '001010000000001' } } }));
    expect(thing.thingArn).toBe('arn:aws:iot:us-east-1:123456789012:thing/meter-1');
    // Same name, same attributes: idempotent like AWS.
    const again = await iot.send(new CreateThingCommand({ thingName: 'meter-1', attributePayload: { attributes: { imsi: '001010000000001' } } }));
    expect(again.thingId).toBe(thing.thingId);

    const policy = await iot.send(new CreatePolicyCommand({ policyName: 'meter-policy', policyDocument: thingPolicy('us-east-1', '123456789012') }));
    expect(policy.policyArn).toBe('arn:aws:iot:us-east-1:123456789012:policy/meter-policy');
    await iot.send(new AttachPolicyCommand({ policyName: 'meter-policy', target: cert.certificateArn }));
    await iot.send(new AttachThingPrincipalCommand({ thingName: 'meter-1', principal: cert.certificateArn }));

    const endpoint = await iot.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' }));
    expect(endpoint.endpointAddress).toBe(sb.dataHost);

    const described = await iot.send(new DescribeCertificateCommand({ certificateId: cert.certificateId }));
    expect(described.certificateDescription).toMatchObject({ status: 'ACTIVE', certificateArn: cert.certificateArn, ownedBy: '123456789012' });
    expect(described.certificateDescription!.creationDate).toBeInstanceOf(Date);

    expect((await iot.send(new DescribeThingCommand({ thingName: 'meter-1' }))).attributes).toEqual({ imsi: '001010000000001' });
    expect((await iot.send(new GetPolicyCommand({ policyName: 'meter-policy' }))).policyDocument).toBe(thingPolicy('us-east-1', '123456789012'));
    expect((await iot.send(new ListThingPrincipalsCommand({ thingName: 'meter-1' }))).principals).toEqual([cert.certificateArn]);
    expect((await iot.send(new ListPrincipalThingsCommand({ principal: cert.certificateArn }))).things).toEqual(['meter-1']);
    expect((await iot.send(new ListTargetsForPolicyCommand({ policyName: 'meter-policy' }))).targets).toEqual([cert.certificateArn]);
    expect((await iot.send(new ListAttachedPoliciesCommand({ target: cert.certificateArn }))).policies).toEqual([
      { policyName: 'meter-policy', policyArn: policy.policyArn },
    ]);

    const listed = await iot.send(new ListCertificatesCommand({ pageSize: 250 }));
    expect(listed.certificates).toContainEqual(
      expect.objectContaining({ certificateId: cert.certificateId, certificateArn: cert.certificateArn, status: 'ACTIVE' }),
    );

    const state = (await (await fetch(`${sb.controlEndpoint}/_sandbox/state`)).json()) as {
      certificates: { certificateId: string; status: string; policies: string[]; things: string[] }[];
    };
    expect(state.certificates.find((c) => c.certificateId === cert.certificateId)).toMatchObject({
      status: 'ACTIVE',
      policies: ['meter-policy'],
      things: ['meter-1'],
    });
  });

  it('creates INACTIVE certificates unless setAsActive, and pages ListCertificates', async () => {
    const { csrPem } = await makeDeviceCsr('paged');
    const cert = await iot.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: csrPem }));
    const d = await iot.send(new DescribeCertificateCommand({ certificateId: cert.certificateId }));
    expect(d.certificateDescription!.status).toBe('INACTIVE');

    const seen: string[] = [];
    let marker: string | undefined;
    do {
      const page = await iot.send(new ListCertificatesCommand({ pageSize: 1, marker }));
      seen.push(...page.certificates!.map((c) => c.certificateId!));
      marker = page.nextMarker;
    } while (marker);
    expect(seen).toContain(cert.certificateId);
    expect(new Set(seen).size).toBe(seen.length);
  });

  it('enforces the certificate lifecycle rules of DeleteCertificate', async () => {
    const dev = await vendThing(iot, 'lifecycle-1');
    const del = () => iot.send(new DeleteCertificateCommand({ certificateId: dev.certificateId }));

    expect((await failure(del())).name).toBe('CertificateStateException');
    await iot.send(new UpdateCertificateCommand({ certificateId: dev.certificateId, newStatus: 'INACTIVE' }));
    const attached = await failure(del());
    expect(attached.name).toBe('DeleteConflictException');
    expect(attached.message).toMatch(/Things must be detached/);

    await iot.send(new DetachThingPrincipalCommand({ thingName: 'lifecycle-1', principal: dev.certificateArn }));
    expect((await failure(del())).message).toMatch(/policies must be detached/);
    await iot.send(new DetachPolicyCommand({ policyName: 'sandbox-thing-policy', target: dev.certificateArn }));
    await del();
    expect((await failure(iot.send(new DescribeCertificateCommand({ certificateId: dev.certificateId })))).name).toBe('ResourceNotFoundException');
    await iot.send(new DeleteThingCommand({ thingName: 'lifecycle-1' }));

    // A revoked certificate cannot come back.
    const rev = await vendThing(iot, 'lifecycle-2');
    await iot.send(new UpdateCertificateCommand({ certificateId: rev.certificateId, newStatus: 'REVOKED' }));
    const back = await failure(iot.send(new UpdateCertificateCommand({ certificateId: rev.certificateId, newStatus: 'ACTIVE' })));
    expect(back.name).toBe('CertificateStateException');
    // forceDelete detaches policies, but things must still be detached first.
    await iot.send(new DetachThingPrincipalCommand({ thingName: 'lifecycle-2', principal: rev.certificateArn }));
    await iot.send(new DeleteCertificateCommand({ certificateId: rev.certificateId, forceDelete: true }));
  });
});

describe('policy life cycle', () => {
  const doc = (topic: string) =>
    JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'iot:Publish', Resource: `arn:aws:iot:us-east-1:123456789012:topic/${topic}` }] });

  it('keeps at most five versions, puts a default version in force, and never deletes the default', async () => {
    await iot.send(new CreatePolicyCommand({ policyName: 'versions-1', policyDocument: doc('v1') }));
    for (let i = 2; i <= 5; i++) {
      const v = await iot.send(new CreatePolicyVersionCommand({ policyName: 'versions-1', policyDocument: doc(`v${i}`), setAsDefault: i === 3 }));
      expect(v.policyVersionId).toBe(String(i));
      expect(v.isDefaultVersion).toBe(i === 3);
    }
    const sixth = await failure(iot.send(new CreatePolicyVersionCommand({ policyName: 'versions-1', policyDocument: doc('v6') })));
    expect(sixth.name).toBe('VersionsLimitExceededException');
    expect(sixth.$metadata?.httpStatusCode).toBe(409);
    expect((await iot.send(new GetPolicyCommand({ policyName: 'versions-1' }))).policyDocument).toBe(doc('v3'));
    expect((await failure(iot.send(new DeletePolicyVersionCommand({ policyName: 'versions-1', policyVersionId: '3' })))).name).toBe('DeleteConflictException');
    await iot.send(new DeletePolicyVersionCommand({ policyName: 'versions-1', policyVersionId: '1' }));
    await iot.send(new SetDefaultPolicyVersionCommand({ policyName: 'versions-1', policyVersionId: '5' }));
    const listed = await iot.send(new ListPolicyVersionsCommand({ policyName: 'versions-1' }));
    expect(listed.policyVersions!.map((v) => [v.versionId, v.isDefaultVersion])).toEqual([['2', false], ['3', false], ['4', false], ['5', true]]);
    const next = await iot.send(new CreatePolicyVersionCommand({ policyName: 'versions-1', policyDocument: doc('v6'), setAsDefault: true }));
    expect(next.policyVersionId).toBe('6');
  });

  it('refuses a policy document over 2,048 characters, whitespace not counted', async () => {
    const long = (chars: number, pad: string) => {
      const base = doc('x');
      return base.replace('topic/x', `topic/${'a'.repeat(chars - base.length + 1)}`) + pad;
    };
    expect(long(2048, '').length).toBe(2048);
    await iot.send(new CreatePolicyCommand({ policyName: 'size-ok', policyDocument: long(2048, ' '.repeat(500)) }));
    const over = await failure(iot.send(new CreatePolicyCommand({ policyName: 'size-over', policyDocument: long(2049, '') })));
    expect(over.name).toBe('MalformedPolicyException');
    expect((await failure(iot.send(new CreatePolicyVersionCommand({ policyName: 'size-ok', policyDocument: long(2049, '') })))).name).toBe('MalformedPolicyException');
  });
});

describe('errors', () => {
  it('throws the named SDK exceptions', async () => {
    const missing = await failure(iot.send(new DescribeThingCommand({ thingName: 'no-such-thing' })));
    expect(missing.name).toBe('ResourceNotFoundException');
    expect(missing).toBeInstanceOf(ResourceNotFoundException);
    expect(missing.$metadata?.httpStatusCode).toBe(404);

    await iot.send(new CreatePolicyCommand({ policyName: 'dup', policyDocument: thingPolicy('us-east-1', '123456789012') }));
    const dup = await failure(iot.send(new CreatePolicyCommand({ policyName: 'dup', policyDocument: thingPolicy('us-east-1', '123456789012') })));
    expect(dup.name).toBe('ResourceAlreadyExistsException');
    expect(dup.$metadata?.httpStatusCode).toBe(409);

    await iot.send(new CreateThingCommand({ thingName: 'dup-thing', attributePayload: { attributes: { a: '1' } } }));
    const differs = await failure(iot.send(new CreateThingCommand({ thingName: 'dup-thing', attributePayload: { attributes: { a: '2' } } })));
    expect(differs.name).toBe('ResourceAlreadyExistsException');

    const malformed = await failure(iot.send(new CreatePolicyCommand({ policyName: 'bad', policyDocument: '{"Statement": "nope"' })));
    expect(malformed.name).toBe('MalformedPolicyException');

    const badCsr = await failure(iot.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: 'not a csr' })));
    expect(badCsr.name).toBe('InvalidRequestException');
    expect(badCsr.$metadata?.httpStatusCode).toBe(400);

    const unknownPolicy = await failure(iot.send(new AttachPolicyCommand({ policyName: 'nope', target: 'arn:aws:iot:us-east-1:123456789012:cert/' + 'a'.repeat(64) })));
    expect(unknownPolicy.name).toBe('ResourceNotFoundException');

    const attached = await failure(
      iot.send(new AttachThingPrincipalCommand({ thingName: 'dup-thing', principal: 'arn:aws:iot:us-east-1:123456789012:cert/' + 'b'.repeat(64) })),
    );
    expect(attached.name).toBe('ResourceNotFoundException');

    await iot.send(new DeletePolicyCommand({ policyName: 'dup' }));
  });

  it('answers unknown operations and malformed requests AWS-style, without crashing', async () => {
    // An operation the sandbox does not implement, through the SDK.
    const unknown = await failure(iot.send(new ListThingGroupsCommand({})));
    expect(unknown.name).toBe('UnknownOperationException');
    expect(unknown.$metadata?.httpStatusCode).toBe(404);

    const raw = await fetch(`${sb.controlEndpoint}/no/such/path`, { method: 'PATCH' });
    expect(raw.status).toBe(404);
    expect(raw.headers.get('x-amzn-errortype')).toBe('UnknownOperationException');
    expect(await raw.json()).toHaveProperty('message');

    const badJson = await fetch(`${sb.controlEndpoint}/policies/p1`, { method: 'POST', body: '{not json', headers: { 'content-type': 'application/json' } });
    expect(badJson.status).toBe(400);
    expect(badJson.headers.get('x-amzn-errortype')).toBe('InvalidRequestException');

    const badName = await fetch(`${sb.controlEndpoint}/things/${encodeURIComponent('has space')}`, { method: 'POST', body: '{}' });
    expect(badName.headers.get('x-amzn-errortype')).toBe('InvalidRequestException');

    // Still serving.
    expect((await iot.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' }))).endpointAddress).toBe(sb.dataHost);
  });
});

describe('fault injection', () => {
  it('throttles: the SDK retries, then surfaces ThrottlingException', async () => {
    const retrying = sandboxIotClient(sb.controlEndpoint, { maxAttempts: 2 });
    sb.faults.configure({ throttleRate: 1 });
    const err = await failure(retrying.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' })));
    retrying.destroy();
    expect(err.name).toBe('ThrottlingException');
    expect(err.$metadata?.attempts).toBe(2);
    expect(sb.faults.stats().throttled.DescribeEndpoint).toBe(2);
  });

  it('fails scripted calls with InternalFailureException, configured over HTTP', async () => {
    const res = await fetch(`${sb.controlEndpoint}/_sandbox/faults`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ failNext: { CreateThing: 1 } }),
    });
    expect(res.status).toBe(200);
    const err = await failure(iot.send(new CreateThingCommand({ thingName: 'flaky' })));
    expect(err.name).toBe('InternalFailureException');
    expect(err.$metadata?.httpStatusCode).toBe(500);
    await iot.send(new CreateThingCommand({ thingName: 'flaky' })); // only the next one failed
    const stats = (await (await fetch(`${sb.controlEndpoint}/_sandbox/faults`)).json()) as { stats: { failed: Record<string, number> } };
    expect(stats.stats.failed).toEqual({ CreateThing: 1 });

    const invalid = await fetch(`${sb.controlEndpoint}/_sandbox/faults`, { method: 'POST', body: JSON.stringify({ throttleRate: 2 }) });
    expect(invalid.status).toBe(400);
    expect(invalid.headers.get('x-amzn-errortype')).toBe('InvalidRequestException');
  });

  it('enforces a per-operation TPS quota with a token bucket', async () => {
    sb.faults.configure({ tps: { CreateThing: 5 } });
    const t0 = performance.now();
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => iot.send(new CreateThingCommand({ thingName: `burst-${i}` }))),
    );
    const elapsedS = (performance.now() - t0) / 1000;
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    const throttledErrors = results.filter((r) => r.status === 'rejected' && (r.reason as Error).name === 'ThrottlingException').length;
    expect(ok).toBeGreaterThanOrEqual(5); // the full bucket
    expect(ok).toBeLessThanOrEqual(5 + Math.ceil(elapsedS * 5)); // plus what refilled during the burst
    expect(ok + throttledErrors).toBe(20);
    expect(sb.faults.stats().throttled.CreateThing).toBe(throttledErrors);
    // Other operations are not limited.
    await iot.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' }));
    // The bucket refills at 5 tokens/s.
    await new Promise((r) => setTimeout(r, 400));
    await iot.send(new CreateThingCommand({ thingName: 'after-refill' }));
  });

  it('adds latency', async () => {
    sb.faults.configure({ latencyMs: 150, operations: ['DescribeEndpoint'] });
    const t0 = performance.now();
    await iot.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' }));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(140);
  });
});

describe('persistence', () => {
  it('keeps the CA, server certificate and registry across restarts', async () => {
    const dir = tempDir();
    const first = await start(dir);
    const client1 = sandboxIotClient(first.controlEndpoint);
    const dev = await vendThing(client1, 'persisted-1');
    await client1.send(new UpdateCertificateCommand({ certificateId: dev.certificateId, newStatus: 'INACTIVE' }));
    client1.destroy();
    const caPem = first.caPem;
    await first.close();

    const second = await start(dir);
    const client2 = sandboxIotClient(second.controlEndpoint);
    try {
      expect(second.caPem).toBe(caPem);
      const d = await client2.send(new DescribeCertificateCommand({ certificateId: dev.certificateId }));
      expect(d.certificateDescription!.status).toBe('INACTIVE');
      expect((await client2.send(new ListThingPrincipalsCommand({ thingName: 'persisted-1' }))).principals).toEqual([dev.certificateArn]);
      expect((await client2.send(new ListTargetsForPolicyCommand({ policyName: 'sandbox-thing-policy' }))).targets).toEqual([dev.certificateArn]);
    } finally {
      client2.destroy();
      await second.close();
    }
  });
});
