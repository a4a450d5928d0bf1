// The IoT Core registry the sandbox keeps: certificates, things, policies and
// the two kinds of attachment (policy → target, thing → principal), with IoT
// Core's rules for each change. Both planes read it; only the control plane
// changes it. Every change is journaled so it survives restarts.
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import type { IssuedCertificate } from './ca.ts';
import { type Account, certArn, certIdFromArn, policyArn, thingArn, thingGroupArn } from './arn.ts';
import {
  alreadyExists,
  certificateState,
  deleteConflict,
  invalidRequest,
  limitExceeded,
  malformedPolicy,
  notFound,
  versionConflict,
  versionsLimitExceeded,
} from './errors.ts';
import { Journal } from './journal.ts';
import { Lagged } from './propagation.ts';
import { type ParsedPolicy, PolicyError, parsePolicy } from './policy.ts';

export type CertificateStatus = 'ACTIVE' | 'INACTIVE' | 'REVOKED';
const SETTABLE_STATUSES = new Set<string>(['ACTIVE', 'INACTIVE', 'REVOKED']);

export interface CertificateRecord {
  certificateId: string;
  certificateArn: string;
  status: CertificateStatus;
  certificatePem: string;
  subject: string;
  creationDate: number;
  lastModifiedDate: number;
  notBefore: number;
  notAfter: number;
  customerVersion: number;
  generationId: string;
}

export interface ThingRecord {
  thingName: string;
  thingArn: string;
  thingId: string;
  attributes: Record<string, string>;
  version: number;
  creationDate: number;
}

export interface ThingGroupRecord {
  thingGroupName: string;
  thingGroupArn: string;
  thingGroupId: string;
  creationDate: number;
}

export interface PolicyVersionRecord {
  versionId: string;
  policyDocument: string;
  createDate: number;
}

export interface PolicyRecord {
  policyName: string;
  policyArn: string;
  /** The default version's document: the one in force. */
  policyDocument: string;
  defaultVersionId: string;
  creationDate: number;
  lastModifiedDate: number;
  generationId: string;
  /** Every version kept (absent in journals from before versions: then only version 1). */
  versions?: PolicyVersionRecord[];
  lastVersionId?: number;
}

// IoT Core quotas and name patterns that a gateway could get wrong.
const MAX_POLICIES_PER_TARGET = 10;
// "Maximum length of 2048, excluding whitespace" (CreatePolicy, CreatePolicyVersion); "up to five versions".
const MAX_POLICY_CHARS = 2048;
const MAX_POLICY_VERSIONS = 5;
const MAX_ATTRIBUTES_WITHOUT_TYPE = 3;
const THING_NAME = /^[a-zA-Z0-9:_-]{1,128}$/;
const POLICY_NAME = /^[\w+=,.@-]{1,128}$/;
const CERT_ID = /^[0-9a-fA-F]{64}$/;
const ATTR_NAME = /^[a-zA-Z0-9_.,@/:#-]{1,128}$/;
const ATTR_VALUE = /^[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}$/;

const CERT = 'cert';
const THING = 'thing';
const POLICY = 'policy';
const POLICY_TARGET = 'policyTarget';
const THING_PRINCIPAL = 'thingPrincipal';
const THING_GROUP = 'thingGroup';
const GROUP_MEMBER = 'thingGroupMember';

/** A link between two names, indexed both ways. */
class Links {
  private readonly byLeft = new Map<string, Set<string>>();
  private readonly byRight = new Map<string, Set<string>>();
  add(l: string, r: string): void {
    getOrCreate(this.byLeft, l).add(r);
    getOrCreate(this.byRight, r).add(l);
  }
  remove(l: string, r: string): void {
    this.byLeft.get(l)?.delete(r);
    this.byRight.get(r)?.delete(l);
  }
  has(l: string, r: string): boolean {
    return this.byLeft.get(l)?.has(r) ?? false;
  }
  rightsOf(l: string): string[] {
    return [...(this.byLeft.get(l) ?? [])];
  }
  leftsOf(r: string): string[] {
    return [...(this.byRight.get(r) ?? [])];
  }
}

/** How long the data plane takes to see each kind of change (propagation.ts). */
export interface Propagation {
  /** Certificate status: a new certificate, activation, deactivation, deletion. */
  certificatesMs: number;
  /** Policy ↔ certificate and thing ↔ certificate attachments and detachments. */
  attachmentsMs: number;
  /** A policy's default version. */
  policyVersionsMs: number;
}

export interface RegistryEvents {
  /** A certificate stopped being ACTIVE (or was deleted): its live connections must go. */
  certificateDisabled: [certificateId: string];
}

export class Registry extends EventEmitter<RegistryEvents> {
  readonly account: Account;
  private readonly journal: Journal;
  private readonly certs: Map<string, CertificateRecord>;
  private readonly things: Map<string, ThingRecord>;
  private readonly policies: Map<string, PolicyRecord>;
  private readonly parsed = new Map<string, ParsedPolicy>();
  /** policyName ↔ target ARN */
  private readonly policyTargets = new Links();
  /** thingName ↔ principal ARN */
  private readonly thingPrincipals = new Links();
  private readonly thingGroups: Map<string, ThingGroupRecord>;
  /** thingGroupName ↔ thingName */
  private readonly groupMembers = new Links();

  /** What the data plane sees, `propagationDelayMs` behind the control plane (propagation.ts). */
  private readonly seenStatus: Lagged<CertificateStatus | undefined>;
  private readonly seenPolicyLinks: Lagged<boolean>;
  private readonly seenThingLinks: Lagged<boolean>;
  private readonly seenDocuments: Lagged<ParsedPolicy | undefined>;
  private readonly propagation: Propagation;

  constructor(file: string, account: Account, propagation: Partial<Propagation> = {}) {
    super();
    this.account = account;
    this.propagation = { certificatesMs: 0, attachmentsMs: 0, policyVersionsMs: 0, ...propagation };
    this.seenStatus = new Lagged(this.propagation.certificatesMs);
    this.seenPolicyLinks = new Lagged(this.propagation.attachmentsMs);
    this.seenThingLinks = new Lagged(this.propagation.attachmentsMs);
    this.seenDocuments = new Lagged(this.propagation.policyVersionsMs);
    this.journal = new Journal(file);
    this.certs = this.journal.table(CERT) as Map<string, CertificateRecord>;
    this.things = this.journal.table(THING) as Map<string, ThingRecord>;
    this.policies = this.journal.table(POLICY) as Map<string, PolicyRecord>;
    for (const p of this.policies.values()) this.parsed.set(p.policyName, parsePolicy(p.policyDocument));
    for (const v of this.journal.table(POLICY_TARGET).values()) {
      const { policyName, target } = v as { policyName: string; target: string };
      this.policyTargets.add(policyName, target);
    }
    for (const v of this.journal.table(THING_PRINCIPAL).values()) {
      const { thingName, principal } = v as { thingName: string; principal: string };
      this.thingPrincipals.add(thingName, principal);
    }
    this.thingGroups = this.journal.table(THING_GROUP) as Map<string, ThingGroupRecord>;
    for (const v of this.journal.table(GROUP_MEMBER).values()) {
      const { thingGroupName, thingName } = v as { thingGroupName: string; thingName: string };
      this.groupMembers.add(thingGroupName, thingName);
    }
  }

  close(): void {
    this.journal.close();
  }

  // ---- certificates ----

  addCertificate(issued: IssuedCertificate, active: boolean): CertificateRecord {
    const now = Date.now();
    const rec: CertificateRecord = {
      certificateId: issued.certificateId,
      certificateArn: certArn(this.account, issued.certificateId),
      status: active ? 'ACTIVE' : 'INACTIVE',
      certificatePem: issued.pem,
      subject: issued.subject,
      creationDate: now,
      lastModifiedDate: now,
      notBefore: issued.notBefore.getTime(),
      notAfter: issued.notAfter.getTime(),
      customerVersion: 1,
      generationId: randomUUID(),
    };
    this.seenStatus.changing(rec.certificateId, undefined);
    this.journal.put(CERT, rec.certificateId, rec);
    return rec;
  }

  /** The certificate's status as the data plane sees it (undefined: unknown there). */
  dataPlaneStatus(certificateId: string): CertificateStatus | undefined {
    return this.seenStatus.view(certificateId, this.certs.get(certificateId)?.status);
  }

  findCertificate(certificateId: string): CertificateRecord | undefined {
    return this.certs.get(certificateId);
  }

  certificate(certificateId: string): CertificateRecord {
    if (!CERT_ID.test(certificateId)) throw invalidRequest(`Invalid certificate id: ${certificateId}`);
    const rec = this.certs.get(certificateId);
    if (!rec) throw notFound(`The certificate ${certificateId} does not exist`);
    return rec;
  }

  listCertificates(ascending: boolean): CertificateRecord[] {
    const list = [...this.certs.values()].sort((a, b) => a.creationDate - b.creationDate);
    return ascending ? list : list.reverse();
  }

  updateCertificate(certificateId: string, newStatus: string): void {
    if (!SETTABLE_STATUSES.has(newStatus)) {
      throw invalidRequest(`newStatus must be one of ACTIVE, INACTIVE, REVOKED in the sandbox, got ${newStatus}`);
    }
    const rec = this.certificate(certificateId);
    if (rec.status === 'REVOKED' && newStatus !== 'REVOKED') {
      throw certificateState(`The certificate ${certificateId} is revoked and cannot change status`);
    }
    const updated: CertificateRecord = {
      ...rec,
      status: newStatus as CertificateStatus,
      lastModifiedDate: Date.now(),
      customerVersion: rec.customerVersion + 1,
      generationId: randomUUID(),
    };
    this.seenStatus.changing(certificateId, rec.status);
    this.journal.put(CERT, certificateId, updated);
    if (updated.status !== 'ACTIVE') this.disabledLater(certificateId);
  }

  deleteCertificate(certificateId: string, forceDelete: boolean): void {
    const rec = this.certificate(certificateId);
    if (rec.status === 'ACTIVE') {
      throw certificateState(`Certificate ${certificateId} is ACTIVE; deactivate it before deletion`);
    }
    // A detachment still propagating counts as attached: IoT Core answers DeleteConflictException then too.
    const things = this.thingPrincipals.leftsOf(rec.certificateArn).length > 0 || this.seenThingLinks.keys().some((k) => k.endsWith(`\n${rec.certificateArn}`) && this.isThingAttached(k.slice(0, k.indexOf('\n')), rec.certificateArn));
    if (things) {
      throw deleteConflict(`Things must be detached before deletion (arn: ${rec.certificateArn})`);
    }
    const policies = this.policyTargets.leftsOf(rec.certificateArn);
    if (policies.length > 0 && !forceDelete) {
      throw deleteConflict(`Certificate policies must be detached before deletion (arn: ${rec.certificateArn})`);
    }
    for (const p of policies) this.unlinkPolicy(p, rec.certificateArn);
    this.seenStatus.changing(certificateId, rec.status);
    this.journal.put(CERT, certificateId, undefined);
    this.disabledLater(certificateId);
  }

  /** The data plane drops a certificate's connections once it learns the certificate is no longer ACTIVE. */
  private disabledLater(certificateId: string): void {
    const delay = this.propagation.certificatesMs;
    if (delay <= 0) return void this.emit('certificateDisabled', certificateId);
    setTimeout(() => {
      if (this.dataPlaneStatus(certificateId) !== 'ACTIVE') this.emit('certificateDisabled', certificateId);
    }, delay + 1).unref();
  }

  // ---- things ----

  createThing(thingName: string, attributes: Record<string, string>, thingTypeName?: string): ThingRecord {
    checkThingName(thingName);
    if (thingTypeName) throw notFound(`Thing type ${thingTypeName} does not exist (the sandbox has no thing types)`);
    checkAttributes(attributes);
    const existing = this.things.get(thingName);
    if (existing) {
      // CreateThing is idempotent when nothing would change, as on AWS.
      if (sameAttributes(existing.attributes, attributes)) return existing;
      throw alreadyExists(`Thing ${thingName} already exists with different attributes`, existing.thingId, existing.thingArn);
    }
    const rec: ThingRecord = {
      thingName,
      thingArn: thingArn(this.account, thingName),
      thingId: randomUUID(),
      attributes: { ...attributes },
      version: 1,
      creationDate: Date.now(),
    };
    this.journal.put(THING, thingName, rec);
    return rec;
  }

  findThing(thingName: string): ThingRecord | undefined {
    return this.things.get(thingName);
  }

  thing(thingName: string): ThingRecord {
    checkThingName(thingName);
    const rec = this.things.get(thingName);
    if (!rec) throw notFound(`Thing ${thingName} cannot be found.`);
    return rec;
  }

  listThings(): ThingRecord[] {
    return [...this.things.values()].sort((a, b) => a.thingName.localeCompare(b.thingName));
  }

  /** Deleting a thing that does not exist succeeds, as documented for IoT Core. */
  deleteThing(thingName: string, expectedVersion?: number): void {
    checkThingName(thingName);
    const rec = this.things.get(thingName);
    if (!rec) return;
    if (expectedVersion !== undefined && expectedVersion !== rec.version) {
      throw versionConflict(`The version for thing ${thingName} does not match the expected version.`);
    }
    if (this.thingPrincipals.rightsOf(thingName).length > 0) {
      throw invalidRequest(`Cannot delete. Thing ${thingName} is still attached to one or more principals`);
    }
    for (const group of this.groupMembers.leftsOf(thingName)) {
      this.groupMembers.remove(group, thingName);
      this.journal.put(GROUP_MEMBER, `${group}\n${thingName}`, undefined);
    }
    this.journal.put(THING, thingName, undefined);
  }

  // ---- thing groups (static groups without properties, hierarchy or dynamic membership) ----

  /** Creating a group that exists returns it, as on AWS when nothing would change. */
  createThingGroup(thingGroupName: string): ThingGroupRecord {
    checkThingName(thingGroupName);
    const existing = this.thingGroups.get(thingGroupName);
    if (existing) return existing;
    const rec: ThingGroupRecord = {
      thingGroupName,
      thingGroupArn: thingGroupArn(this.account, thingGroupName),
      thingGroupId: randomUUID(),
      creationDate: Date.now(),
    };
    this.journal.put(THING_GROUP, thingGroupName, rec);
    return rec;
  }

  addThingToThingGroup(thingGroupName: string, thingName: string): void {
    if (!this.thingGroups.has(thingGroupName)) throw notFound(`Thing group ${thingGroupName} cannot be found.`);
    this.thing(thingName);
    if (this.groupMembers.has(thingGroupName, thingName)) return;
    this.groupMembers.add(thingGroupName, thingName);
    this.journal.put(GROUP_MEMBER, `${thingGroupName}\n${thingName}`, { thingGroupName, thingName });
  }

  // ---- policies ----

  createPolicy(policyName: string, policyDocument: string): PolicyRecord {
    checkPolicyName(policyName);
    const existing = this.policies.get(policyName);
    if (existing) throw alreadyExists(`Policy cannot be created - name already exists (name=${policyName})`, policyName, existing.policyArn);
    const parsed = checkPolicyDocument(policyDocument);
    const now = Date.now();
    const rec: PolicyRecord = {
      policyName,
      policyArn: policyArn(this.account, policyName),
      policyDocument,
      defaultVersionId: '1',
      creationDate: now,
      lastModifiedDate: now,
      generationId: randomUUID(),
      versions: [{ versionId: '1', policyDocument, createDate: now }],
      lastVersionId: 1,
    };
    this.parsed.set(policyName, parsed);
    this.journal.put(POLICY, policyName, rec);
    return rec;
  }

  policyVersions(policyName: string): PolicyVersionRecord[] {
    const p = this.policy(policyName);
    return p.versions ?? [{ versionId: p.defaultVersionId, policyDocument: p.policyDocument, createDate: p.creationDate }];
  }

  policyVersion(policyName: string, versionId: string): PolicyVersionRecord {
    const v = this.policyVersions(policyName).find((x) => x.versionId === versionId);
    if (!v) throw notFound(`Policy version not found (name=${policyName}, versionId=${versionId})`);
    return v;
  }

  /** CreatePolicyVersion: at most five versions; setAsDefault puts the new one in force. */
  createPolicyVersion(policyName: string, policyDocument: string, setAsDefault: boolean): PolicyVersionRecord {
    const p = this.policy(policyName);
    const versions = this.policyVersions(policyName);
    const parsed = checkPolicyDocument(policyDocument);
    if (versions.length >= MAX_POLICY_VERSIONS) {
      throw versionsLimitExceeded(`The policy ${policyName} already has the maximum number of versions (${MAX_POLICY_VERSIONS})`);
    }
    const now = Date.now();
    const lastVersionId = (p.lastVersionId ?? Math.max(...versions.map((v) => Number(v.versionId)))) + 1;
    const version: PolicyVersionRecord = { versionId: String(lastVersionId), policyDocument, createDate: now };
    const rec: PolicyRecord = { ...p, versions: [...versions, version], lastVersionId, lastModifiedDate: now, generationId: randomUUID() };
    this.journal.put(POLICY, policyName, setAsDefault ? this.withDefault(rec, version, parsed) : rec);
    return version;
  }

  setDefaultPolicyVersion(policyName: string, versionId: string): void {
    const version = this.policyVersion(policyName, versionId);
    const p = this.policy(policyName);
    this.journal.put(POLICY, policyName, this.withDefault({ ...p, versions: this.policyVersions(policyName), lastModifiedDate: Date.now() }, version, parsePolicy(version.policyDocument)));
  }

  deletePolicyVersion(policyName: string, versionId: string): void {
    this.policyVersion(policyName, versionId);
    const p = this.policy(policyName);
    if (p.defaultVersionId === versionId) throw deleteConflict(`Cannot delete the default version ${versionId} of policy ${policyName}`);
    this.journal.put(POLICY, policyName, { ...p, versions: this.policyVersions(policyName).filter((v) => v.versionId !== versionId) });
  }

  private withDefault(rec: PolicyRecord, version: PolicyVersionRecord, parsed: ParsedPolicy): PolicyRecord {
    this.seenDocuments.changing(rec.policyName, this.parsed.get(rec.policyName));
    this.parsed.set(rec.policyName, parsed);
    return { ...rec, policyDocument: version.policyDocument, defaultVersionId: version.versionId };
  }

  policy(policyName: string): PolicyRecord {
    checkPolicyName(policyName);
    const rec = this.policies.get(policyName);
    if (!rec) throw notFound(`Policy not found (name=${policyName})`);
    return rec;
  }

  listPolicies(ascending: boolean): PolicyRecord[] {
    const list = [...this.policies.values()].sort((a, b) => a.policyName.localeCompare(b.policyName));
    return ascending ? list : list.reverse();
  }

  deletePolicy(policyName: string): void {
    this.policy(policyName);
    if (this.policyTargets.rightsOf(policyName).length > 0) {
      throw deleteConflict(`The policy cannot be deleted as the policy is attached to one or more principals (name=${policyName})`);
    }
    if (this.policyVersions(policyName).length > 1) {
      throw deleteConflict(`Cannot delete the policy ${policyName} while it has non-default versions; delete them first`);
    }
    this.parsed.delete(policyName);
    this.journal.put(POLICY, policyName, undefined);
  }

  attachPolicy(policyName: string, target: string): void {
    this.policy(policyName);
    this.certificateForPrincipal(target);
    if (this.policyTargets.has(policyName, target)) return;
    if (this.policyTargets.leftsOf(target).length >= MAX_POLICIES_PER_TARGET) {
      throw limitExceeded(`A target can have at most ${MAX_POLICIES_PER_TARGET} policies attached`);
    }
    this.seenPolicyLinks.changing(`${policyName}\n${target}`, false);
    this.policyTargets.add(policyName, target);
    this.journal.put(POLICY_TARGET, `${policyName}\n${target}`, { policyName, target });
  }

  detachPolicy(policyName: string, target: string): void {
    this.policy(policyName);
    this.unlinkPolicy(policyName, target);
  }

  targetsForPolicy(policyName: string): string[] {
    this.policy(policyName);
    return this.policyTargets.rightsOf(policyName).sort();
  }

  policiesForTarget(target: string): PolicyRecord[] {
    return this.policyTargets
      .leftsOf(target)
      .sort()
      .map((name) => this.policies.get(name)!);
  }

  /** The parsed documents of every policy attached to target, as the data plane sees them. */
  parsedPoliciesFor(target: string): ParsedPolicy[] {
    const names = new Set(this.policyTargets.leftsOf(target));
    for (const k of this.seenPolicyLinks.keys()) if (k.endsWith(`\n${target}`)) names.add(k.slice(0, k.indexOf('\n')));
    return [...names]
      .filter((name) => this.seenPolicyLinks.view(`${name}\n${target}`, this.policyTargets.has(name, target)))
      .map((name) => this.seenDocuments.view(name, this.parsed.get(name)))
      .filter((p): p is ParsedPolicy => p !== undefined);
  }

  private unlinkPolicy(policyName: string, target: string): void {
    if (!this.policyTargets.has(policyName, target)) return;
    this.seenPolicyLinks.changing(`${policyName}\n${target}`, true);
    this.policyTargets.remove(policyName, target);
    this.journal.put(POLICY_TARGET, `${policyName}\n${target}`, undefined);
  }

  // ---- thing principals ----

  attachThingPrincipal(thingName: string, principal: string): void {
    this.thing(thingName);
    this.certificateForPrincipal(principal);
    if (this.thingPrincipals.has(thingName, principal)) return;
    this.seenThingLinks.changing(`${thingName}\n${principal}`, false);
    this.thingPrincipals.add(thingName, principal);
    this.journal.put(THING_PRINCIPAL, `${thingName}\n${principal}`, { thingName, principal });
  }

  detachThingPrincipal(thingName: string, principal: string): void {
    this.thing(thingName);
    if (!this.thingPrincipals.has(thingName, principal)) return;
    this.seenThingLinks.changing(`${thingName}\n${principal}`, true);
    this.thingPrincipals.remove(thingName, principal);
    this.journal.put(THING_PRINCIPAL, `${thingName}\n${principal}`, undefined);
  }

  principalsOfThing(thingName: string): string[] {
    this.thing(thingName);
    return this.thingPrincipals.rightsOf(thingName).sort();
  }

  thingsOfPrincipal(principal: string): string[] {
    this.certificateForPrincipal(principal);
    return this.thingPrincipals.leftsOf(principal).sort();
  }

  /** Whether the thing is attached to the principal, as the data plane sees it. */
  isThingAttached(thingName: string, principal: string): boolean {
    return this.seenThingLinks.view(`${thingName}\n${principal}`, this.thingPrincipals.has(thingName, principal));
  }

  /** Principals the sandbox knows are certificate ARNs of its own account. */
  private certificateForPrincipal(principal: string): CertificateRecord {
    const id = certIdFromArn(this.account, principal);
    if (id === undefined) {
      throw invalidRequest(`Principal ${principal} is not a certificate ARN of this account (the sandbox supports only certificates)`);
    }
    const rec = this.certs.get(id);
    if (!rec) throw notFound(`The certificate ${id} does not exist`);
    return rec;
  }

  /** The whole registry as plain JSON, for GET /_sandbox/state. */
  snapshot() {
    const iso = (ms: number) => new Date(ms).toISOString();
    return {
      certificates: this.listCertificates(true).map((c) => ({
        certificateId: c.certificateId,
        certificateArn: c.certificateArn,
        status: c.status,
        subject: c.subject,
        creationDate: iso(c.creationDate),
        notAfter: iso(c.notAfter),
        policies: this.policyTargets.leftsOf(c.certificateArn).sort(),
        things: this.thingPrincipals.leftsOf(c.certificateArn).sort(),
      })),
      things: this.listThings().map((t) => ({
        thingName: t.thingName,
        thingArn: t.thingArn,
        thingId: t.thingId,
        attributes: t.attributes,
        version: t.version,
        principals: this.thingPrincipals.rightsOf(t.thingName).sort(),
      })),
      thingGroups: [...this.thingGroups.values()]
        .sort((a, b) => a.thingGroupName.localeCompare(b.thingGroupName))
        .map((g) => ({ thingGroupName: g.thingGroupName, thingGroupArn: g.thingGroupArn, things: this.groupMembers.rightsOf(g.thingGroupName).sort() })),
      policies: this.listPolicies(true).map((p) => ({
        policyName: p.policyName,
        policyArn: p.policyArn,
        policyDocument: p.policyDocument,
        targets: this.policyTargets.rightsOf(p.policyName).sort(),
      })),
    };
  }
}

function checkThingName(name: string): void {
  if (!THING_NAME.test(name)) throw invalidRequest(`Invalid thing name ${JSON.stringify(name)}: must match [a-zA-Z0-9:_-]{1,128}`);
}

/** Parses a policy document and checks IoT Core's size limit: 2,048 characters, whitespace not counted. */
function checkPolicyDocument(document: string): ParsedPolicy {
  const chars = document.replace(/\s/g, '').length;
  if (chars > MAX_POLICY_CHARS) throw malformedPolicy(`Policy document is ${chars} characters long excluding whitespace; the maximum is ${MAX_POLICY_CHARS}`);
  try {
    return parsePolicy(document);
  } catch (err) {
    if (err instanceof PolicyError) throw malformedPolicy(err.message);
    throw err;
  }
}

function checkPolicyName(name: string): void {
  if (!POLICY_NAME.test(name)) throw invalidRequest(`Invalid policy name ${JSON.stringify(name)}: must match [\\w+=,.@-]{1,128}`);
}

function checkAttributes(attributes: Record<string, string>): void {
  const entries = Object.entries(attributes);
  if (entries.length > MAX_ATTRIBUTES_WITHOUT_TYPE) {
    throw invalidRequest(`A thing without a thing type can have at most ${MAX_ATTRIBUTES_WITHOUT_TYPE} attributes`);
  }
  for (const [k, v] of entries) {
    if (!ATTR_NAME.test(k)) throw invalidRequest(`Invalid attribute name ${JSON.stringify(k)}`);
    if (typeof v !== 'string' || !ATTR_VALUE.test(v)) throw invalidRequest(`Invalid value for attribute ${k}: ${JSON.stringify(v)}`);
  }
}

function sameAttributes(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

function getOrCreate<K, V>(m: Map<K, Set<V>>, k: K): Set<V> {
  let s = m.get(k);
  if (!s) m.set(k, (s = new Set()));
  return s;
}
