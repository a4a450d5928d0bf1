// The IoT Core control-plane operations the sandbox serves. Each route's
// method, path, query/header bindings and member names are copied from the
// operation schemas in @aws-sdk/client-iot (dist-cjs: `var CreateThing$ = [9,
// ..., { http: ["POST", "/things/{thingName}", 200] }, ...]`), so the real SDK
// works with only `endpoint` overridden. Timestamps are epoch seconds, the
// restJson1 default.
import { CsrError, type CertificateAuthority } from '../ca.ts';
import { invalidRequest } from '../errors.ts';
import type { CertificateRecord, PolicyRecord, PolicyVersionRecord, Registry } from '../registry.ts';
import type { ControlRequest, Route } from './http.ts';

export interface OperationsContext {
  registry: Registry;
  ca: CertificateAuthority;
  /** What DescribeEndpoint answers: the data plane's host, without port, as on AWS. */
  endpointAddress: string;
  /** Days, or IoT Core's fixed end date for certificates from CreateCertificateFromCsr. */
  certValidityDays: number | Date;
}

const seconds = (ms: number) => ms / 1000;

const POLICY_VERSIONS = '/policies/{policyName}/version';

const isDefault = (p: PolicyRecord, v: PolicyVersionRecord) => v.versionId === p.defaultVersionId;

/** An operation on one version of a policy (/policies/{policyName}/version/{policyVersionId}). */
function onPolicyVersion(operation: string, method: Route['method'], handle: (policyName: string, versionId: string) => unknown): Route {
  return { operation, method, path: `${POLICY_VERSIONS}/{policyVersionId}`, handle: (req) => handle(req.params.policyName!, req.params.policyVersionId!) };
}

export function iotRoutes(ctx: OperationsContext): Route[] {
  const { registry, ca } = ctx;
  const accountId = registry.account.accountId;

  return [
    // ---- certificates ----
    {
      operation: 'CreateCertificateFromCsr',
      method: 'POST',
      path: '/certificates',
      async handle(req) {
        const csr = requiredString(req.json(), 'certificateSigningRequest');
        let issued;
        try {
          issued = await ca.signCsr(csr, ctx.certValidityDays);
        } catch (err) {
          if (err instanceof CsrError) throw invalidRequest(`Invalid certificate signing request: ${err.message}`);
          throw err;
        }
        const rec = registry.addCertificate(issued, queryBool(req, 'setAsActive'));
        return { certificateArn: rec.certificateArn, certificateId: rec.certificateId, certificatePem: rec.certificatePem };
      },
    },
    {
      operation: 'DescribeCertificate',
      method: 'GET',
      path: '/certificates/{certificateId}',
      handle(req) {
        const c = registry.certificate(req.params.certificateId!);
        return {
          certificateDescription: {
            certificateArn: c.certificateArn,
            certificateId: c.certificateId,
            status: c.status,
            certificatePem: c.certificatePem,
            ownedBy: accountId,
            creationDate: seconds(c.creationDate),
            lastModifiedDate: seconds(c.lastModifiedDate),
            customerVersion: c.customerVersion,
            generationId: c.generationId,
            validity: { notBefore: seconds(c.notBefore), notAfter: seconds(c.notAfter) },
            certificateMode: 'DEFAULT',
            transferData: {},
          },
        };
      },
    },
    {
      operation: 'ListCertificates',
      method: 'GET',
      path: '/certificates',
      handle(req) {
        const ascending = queryBool(req, 'isAscendingOrder');
        const page = paginate(registry.listCertificates(ascending), req.query.get('marker'), req.query.get('pageSize'), 25, 250);
        return { certificates: page.items.map(certificateSummary), nextMarker: page.next };
      },
    },
    {
      operation: 'UpdateCertificate',
      method: 'PUT',
      path: '/certificates/{certificateId}',
      handle(req) {
        const status = req.query.get('newStatus');
        if (!status) throw invalidRequest('newStatus is required');
        registry.updateCertificate(req.params.certificateId!, status);
        return undefined;
      },
    },
    {
      operation: 'DeleteCertificate',
      method: 'DELETE',
      path: '/certificates/{certificateId}',
      handle(req) {
        registry.deleteCertificate(req.params.certificateId!, queryBool(req, 'forceDelete'));
        return undefined;
      },
    },

    // ---- things ----
    {
      operation: 'CreateThing',
      method: 'POST',
      path: '/things/{thingName}',
      handle(req) {
        const body = req.json();
        if (body.billingGroupName !== undefined) throw invalidRequest('billingGroupName is not supported by the sandbox');
        const t = registry.createThing(req.params.thingName!, attributesOf(body), optionalString(body, 'thingTypeName'));
        return { thingName: t.thingName, thingArn: t.thingArn, thingId: t.thingId };
      },
    },
    {
      operation: 'DescribeThing',
      method: 'GET',
      path: '/things/{thingName}',
      handle(req) {
        const t = registry.thing(req.params.thingName!);
        return {
          defaultClientId: t.thingName,
          thingName: t.thingName,
          thingId: t.thingId,
          thingArn: t.thingArn,
          attributes: t.attributes,
          version: t.version,
        };
      },
    },
    {
      operation: 'ListThings',
      method: 'GET',
      path: '/things',
      handle(req) {
        const name = req.query.get('attributeName');
        const value = req.query.get('attributeValue');
        const things = registry
          .listThings()
          .filter((t) => !name || (value === null ? name in t.attributes : t.attributes[name] === value));
        const page = paginate(things, req.query.get('nextToken'), req.query.get('maxResults'), 50, 250);
        return {
          things: page.items.map((t) => ({ thingName: t.thingName, thingArn: t.thingArn, attributes: t.attributes, version: t.version })),
          nextToken: page.next,
        };
      },
    },
    {
      operation: 'DeleteThing',
      method: 'DELETE',
      path: '/things/{thingName}',
      handle(req) {
        const v = req.query.get('expectedVersion');
        registry.deleteThing(req.params.thingName!, v === null ? undefined : integer(v, 'expectedVersion'));
        return {};
      },
    },

    // ---- thing groups ----
    {
      operation: 'CreateThingGroup',
      method: 'POST',
      path: '/thing-groups/{thingGroupName}',
      handle(req) {
        const body = req.json();
        if (body.parentGroupName !== undefined || body.thingGroupProperties !== undefined) {
          throw invalidRequest('thing group hierarchy and properties are not supported by the sandbox');
        }
        const g = registry.createThingGroup(req.params.thingGroupName!);
        return { thingGroupName: g.thingGroupName, thingGroupArn: g.thingGroupArn, thingGroupId: g.thingGroupId };
      },
    },
    {
      operation: 'AddThingToThingGroup',
      method: 'PUT',
      path: '/thing-groups/addThingToThingGroup',
      handle(req) {
        const body = req.json();
        registry.addThingToThingGroup(requiredString(body, 'thingGroupName'), requiredString(body, 'thingName'));
        return {};
      },
    },

    // ---- policies ----
    {
      operation: 'CreatePolicy',
      method: 'POST',
      path: '/policies/{policyName}',
      handle(req) {
        const body = req.json();
        const p = registry.createPolicy(req.params.policyName!, requiredString(body, 'policyDocument'));
        return { policyName: p.policyName, policyArn: p.policyArn, policyDocument: p.policyDocument, policyVersionId: p.defaultVersionId };
      },
    },
    {
      operation: 'GetPolicy',
      method: 'GET',
      path: '/policies/{policyName}',
      handle(req) {
        const p = registry.policy(req.params.policyName!);
        return {
          policyName: p.policyName,
          policyArn: p.policyArn,
          policyDocument: p.policyDocument,
          defaultVersionId: p.defaultVersionId,
          creationDate: seconds(p.creationDate),
          lastModifiedDate: seconds(p.lastModifiedDate),
          generationId: p.generationId,
        };
      },
    },
    {
      operation: 'CreatePolicyVersion',
      method: 'POST',
      path: POLICY_VERSIONS,
      handle(req) {
        const name = req.params.policyName!;
        const v = registry.createPolicyVersion(name, requiredString(req.json(), 'policyDocument'), queryBool(req, 'setAsDefault'));
        const p = registry.policy(name);
        return { policyArn: p.policyArn, policyDocument: v.policyDocument, policyVersionId: v.versionId, isDefaultVersion: isDefault(p, v) };
      },
    },
    {
      operation: 'ListPolicyVersions',
      method: 'GET',
      path: POLICY_VERSIONS,
      handle(req) {
        const p = registry.policy(req.params.policyName!);
        return {
          policyVersions: registry.policyVersions(p.policyName).map((v) => ({ versionId: v.versionId, isDefaultVersion: isDefault(p, v), createDate: seconds(v.createDate) })),
        };
      },
    },
    onPolicyVersion('GetPolicyVersion', 'GET', (name, versionId) => {
      const p = registry.policy(name);
      const v = registry.policyVersion(p.policyName, versionId);
      return {
        policyArn: p.policyArn,
        policyName: p.policyName,
        policyDocument: v.policyDocument,
        policyVersionId: v.versionId,
        isDefaultVersion: isDefault(p, v),
        creationDate: seconds(v.createDate),
        lastModifiedDate: seconds(v.createDate),
        generationId: p.generationId,
      };
    }),
    onPolicyVersion('SetDefaultPolicyVersion', 'PATCH', (name, versionId) => void registry.setDefaultPolicyVersion(name, versionId)),
    onPolicyVersion('DeletePolicyVersion', 'DELETE', (name, versionId) => void registry.deletePolicyVersion(name, versionId)),
    {
      operation: 'ListPolicies',
      method: 'GET',
      path: '/policies',
      handle(req) {
        const page = paginate(registry.listPolicies(queryBool(req, 'isAscendingOrder')), req.query.get('marker'), req.query.get('pageSize'), 25, 250);
        return { policies: page.items.map((p) => ({ policyName: p.policyName, policyArn: p.policyArn })), nextMarker: page.next };
      },
    },
    {
      operation: 'DeletePolicy',
      method: 'DELETE',
      path: '/policies/{policyName}',
      handle(req) {
        registry.deletePolicy(req.params.policyName!);
        return undefined;
      },
    },
    {
      operation: 'AttachPolicy',
      method: 'PUT',
      path: '/target-policies/{policyName}',
      handle(req) {
        registry.attachPolicy(req.params.policyName!, requiredString(req.json(), 'target'));
        return undefined;
      },
    },
    {
      operation: 'DetachPolicy',
      method: 'POST',
      path: '/target-policies/{policyName}',
      handle(req) {
        registry.detachPolicy(req.params.policyName!, requiredString(req.json(), 'target'));
        return undefined;
      },
    },
    {
      operation: 'ListTargetsForPolicy',
      method: 'POST',
      path: '/policy-targets/{policyName}',
      handle(req) {
        const targets = registry.targetsForPolicy(req.params.policyName!);
        const page = paginate(targets, req.query.get('marker'), req.query.get('pageSize'), 25, 250);
        return { targets: page.items, nextMarker: page.next };
      },
    },
    {
      operation: 'ListAttachedPolicies',
      method: 'POST',
      path: '/attached-policies/{target}',
      handle(req) {
        const policies = registry.policiesForTarget(req.params.target!);
        const page = paginate(policies, req.query.get('marker'), req.query.get('pageSize'), 25, 250);
        return { policies: page.items.map((p) => ({ policyName: p.policyName, policyArn: p.policyArn })), nextMarker: page.next };
      },
    },

    // ---- thing principals ----
    {
      operation: 'AttachThingPrincipal',
      method: 'PUT',
      path: '/things/{thingName}/principals',
      handle(req) {
        registry.attachThingPrincipal(req.params.thingName!, principalHeader(req));
        return {};
      },
    },
    {
      operation: 'DetachThingPrincipal',
      method: 'DELETE',
      path: '/things/{thingName}/principals',
      handle(req) {
        registry.detachThingPrincipal(req.params.thingName!, principalHeader(req));
        return {};
      },
    },
    {
      operation: 'ListThingPrincipals',
      method: 'GET',
      path: '/things/{thingName}/principals',
      handle(req) {
        const principals = registry.principalsOfThing(req.params.thingName!);
        const page = paginate(principals, req.query.get('nextToken'), req.query.get('maxResults'), 25, 100);
        return { principals: page.items, nextToken: page.next };
      },
    },
    {
      operation: 'ListPrincipalThings',
      method: 'GET',
      path: '/principals/things',
      handle(req) {
        const things = registry.thingsOfPrincipal(principalHeader(req));
        const page = paginate(things, req.query.get('nextToken'), req.query.get('maxResults'), 25, 100);
        return { things: page.items, nextToken: page.next };
      },
    },

    // ---- endpoint ----
    {
      operation: 'DescribeEndpoint',
      method: 'GET',
      path: '/endpoint',
      handle(req) {
        const type = req.query.get('endpointType');
        // No type means the legacy iot:Data endpoint; the sandbox serves both on one listener.
        if (type !== null && type !== 'iot:Data' && type !== 'iot:Data-ATS') {
          throw invalidRequest(`Endpoint type ${type} is not provided by the sandbox (only iot:Data and iot:Data-ATS)`);
        }
        return { endpointAddress: ctx.endpointAddress };
      },
    },
  ];
}

function certificateSummary(c: CertificateRecord) {
  return {
    certificateArn: c.certificateArn,
    certificateId: c.certificateId,
    status: c.status,
    certificateMode: 'DEFAULT',
    creationDate: seconds(c.creationDate),
  };
}

/** Offset-based pages; the marker is opaque to clients, as on AWS. */
function paginate<T>(items: T[], marker: string | null, size: string | null, dflt: number, max: number) {
  const start = marker === null || marker === '' ? 0 : integer(marker, 'marker');
  const n = size === null ? dflt : integer(size, 'page size');
  if (n < 1 || n > max) throw invalidRequest(`page size must be between 1 and ${max}`);
  const end = start + n;
  return { items: items.slice(start, end), next: end < items.length ? String(end) : undefined };
}

function integer(v: string, what: string): number {
  if (!/^\d+$/.test(v)) throw invalidRequest(`Invalid ${what}: ${v}`);
  return Number(v);
}

function queryBool(req: ControlRequest, name: string): boolean {
  return req.query.get(name) === 'true';
}

function principalHeader(req: ControlRequest): string {
  const p = req.headers['x-amzn-principal'];
  if (typeof p !== 'string' || !p) throw invalidRequest('The x-amzn-principal header is required');
  return p;
}

function requiredString(body: Record<string, unknown>, name: string): string {
  const v = body[name];
  if (typeof v !== 'string' || !v) throw invalidRequest(`${name} is required and must be a string`);
  return v;
}

function optionalString(body: Record<string, unknown>, name: string): string | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalidRequest(`${name} must be a string`);
  return v;
}

function attributesOf(body: Record<string, unknown>): Record<string, string> {
  const payload = body.attributePayload;
  if (payload === undefined || payload === null) return {};
  if (typeof payload !== 'object') throw invalidRequest('attributePayload must be an object');
  const attrs = (payload as { attributes?: unknown }).attributes ?? {};
  if (typeof attrs !== 'object' || attrs === null || Array.isArray(attrs)) throw invalidRequest('attributePayload.attributes must be an object');
  return attrs as Record<string, string>;
}
