import {
  AddThingToThingGroupCommand,
  AttachPolicyCommand,
  AttachThingPrincipalCommand,
  CreateCertificateFromCsrCommand,
  CreatePolicyCommand,
  CreateThingCommand,
  CreatePolicyVersionCommand,
  CreateThingGroupCommand,
  DeletePolicyVersionCommand,
  DeleteCertificateCommand,
  DescribeCertificateCommand,
  DescribeEndpointCommand,
  DetachPolicyCommand,
  DetachThingPrincipalCommand,
  GetPolicyCommand,
  type IoTClient,
  ListCertificatesCommand,
  ListPolicyVersionsCommand,
  UpdateCertificateCommand,
} from '@aws-sdk/client-iot';

/**
 * One IoT API permission the gateway uses, and how to call it without changing the account: the calls
 * that would change something name a resource that does not exist or send a document IoT Core refuses
 * after authorizing the caller. An AccessDeniedException means the permission is missing; the refusal
 * that comes after authorization means it is granted.
 */
export interface PermissionProbe {
  action: string;
  /** Which gateway step uses it, for the fix line. */
  usedFor: string;
  call(client: IoTClient, names: ProbeNames): Promise<unknown>;
}

/** Names that fit the configured templates (so resource-scoped policies match) but exist nowhere. */
export interface ProbeNames {
  thingName: string;
  policyName: string;
  thingGroup: string;
  certificateId: string;
  certificateArn: string;
}

/** A certificate id is 64 hex digits; this one is never issued. */
const NO_CERTIFICATE = '0'.repeat(64);

export function probeNames(templates: { thingName: string; policyName: string; thingGroup?: string }, region: string): ProbeNames {
  const fill = (t: string) => t.replace(/\{(\w+)\}/g, (_m, k: string) => (k === 'imsi' ? '000000000000000' : 'doctor-check'));
  return {
    thingName: fill(templates.thingName),
    policyName: fill(templates.policyName),
    thingGroup: fill(templates.thingGroup ?? 'simbridge-{group}'),
    certificateId: NO_CERTIFICATE,
    certificateArn: `arn:aws:iot:${region}:000000000000:cert/${NO_CERTIFICATE}`,
  };
}

export const permissionProbes: PermissionProbe[] = [
  { action: 'iot:DescribeEndpoint', usedFor: 'finding the MQTT data endpoint', call: (c) => c.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' })) },
  { action: 'iot:CreateCertificateFromCsr', usedFor: 'vending certificates', call: (c) => c.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: 'not a CSR', setAsActive: false })) },
  {
    action: 'iot:CreateThing',
    usedFor: 'vending things',
    call: (c, n) => c.send(new CreateThingCommand({ thingName: n.thingName, thingTypeName: 'simbridge-doctor-no-such-type' })),
  },
  { action: 'iot:CreatePolicy', usedFor: 'creating group policies', call: (c, n) => c.send(new CreatePolicyCommand({ policyName: n.policyName, policyDocument: 'not a policy' })) },
  { action: 'iot:GetPolicy', usedFor: 'updating a group policy whose topics changed', call: (c, n) => c.send(new GetPolicyCommand({ policyName: n.policyName })) },
  { action: 'iot:ListPolicyVersions', usedFor: 'updating a group policy whose topics changed', call: (c, n) => c.send(new ListPolicyVersionsCommand({ policyName: n.policyName })) },
  {
    action: 'iot:CreatePolicyVersion',
    usedFor: 'updating a group policy whose topics changed',
    call: (c, n) => c.send(new CreatePolicyVersionCommand({ policyName: n.policyName, policyDocument: 'not a policy', setAsDefault: false })),
  },
  {
    action: 'iot:DeletePolicyVersion',
    usedFor: 'updating a group policy that has five versions',
    call: (c, n) => c.send(new DeletePolicyVersionCommand({ policyName: n.policyName, policyVersionId: '1' })),
  },
  { action: 'iot:AttachPolicy', usedFor: 'vending certificates', call: (c, n) => c.send(new AttachPolicyCommand({ policyName: n.policyName, target: n.certificateArn })) },
  { action: 'iot:AttachThingPrincipal', usedFor: 'vending things', call: (c, n) => c.send(new AttachThingPrincipalCommand({ thingName: n.thingName, principal: n.certificateArn })) },
  { action: 'iot:UpdateCertificate', usedFor: 'suspending, terminating and retiring', call: (c, n) => c.send(new UpdateCertificateCommand({ certificateId: n.certificateId, newStatus: 'INACTIVE' })) },
  { action: 'iot:DetachPolicy', usedFor: 'retiring certificates', call: (c, n) => c.send(new DetachPolicyCommand({ policyName: n.policyName, target: n.certificateArn })) },
  { action: 'iot:DetachThingPrincipal', usedFor: 'retiring certificates', call: (c, n) => c.send(new DetachThingPrincipalCommand({ thingName: n.thingName, principal: n.certificateArn })) },
  { action: 'iot:DeleteCertificate', usedFor: 'retiring certificates', call: (c, n) => c.send(new DeleteCertificateCommand({ certificateId: n.certificateId })) },
  { action: 'iot:ListCertificates', usedFor: 'the orphan sweep after a lost answer', call: (c) => c.send(new ListCertificatesCommand({ pageSize: 1 })) },
  { action: 'iot:DescribeCertificate', usedFor: 'the orphan sweep after a lost answer', call: (c, n) => c.send(new DescribeCertificateCommand({ certificateId: n.certificateId })) },
  {
    action: 'iot:CreateThingGroup',
    usedFor: 'vending.thingGroup',
    call: (c, n) => c.send(new CreateThingGroupCommand({ thingGroupName: n.thingGroup, parentGroupName: 'simbridge-doctor-no-such-group' })),
  },
  {
    action: 'iot:AddThingToThingGroup',
    usedFor: 'vending.thingGroup',
    call: (c, n) => c.send(new AddThingToThingGroupCommand({ thingName: n.thingName, thingGroupName: 'simbridge-doctor-no-such-group' })),
  },
];

export type ProbeOutcome = { granted: true; detail: string } | { granted: false; detail: string };

const DENIED = new Set(['AccessDeniedException', 'UnauthorizedException']);

/** Runs one probe: success or a refusal after authorization count as granted. */
export async function runProbe(probe: PermissionProbe, client: IoTClient, names: ProbeNames): Promise<ProbeOutcome> {
  try {
    await probe.call(client, names);
    return { granted: true, detail: 'allowed' };
  } catch (err) {
    const e = err as Error & { $metadata?: { httpStatusCode?: number } };
    if (DENIED.has(e.name)) return { granted: false, detail: e.message };
    // Without an answer from IoT Core (network, credentials) nothing is known about the permission.
    if (e.$metadata?.httpStatusCode === undefined) return { granted: false, detail: `no answer: ${e.message}` };
    return { granted: true, detail: `allowed (refused after authorization: ${e.name})` };
  }
}
