import type { Logger } from 'pino';
import type { ApiGate } from './api-gate.ts';
import { arnScope, policyDocument, samePolicy } from './policy.ts';
import type { PolicyOutcome, VendingProvider } from './provider.ts';

/** A group's policy as the config renders it: its name and the upstream topic templates it allows. */
export interface GroupPolicy {
  name: string;
  topicTemplates: string[];
}

export interface PolicySyncDeps {
  provider: Pick<VendingProvider, 'describePolicy' | 'ensurePolicy'>;
  gate: ApiGate;
  log: Logger;
  /** A policy got a new default version: IoT Core applies it minutes later. */
  onPolicyUpdated?(policyName: string): void;
}

/** What a sync did per policy; `absent` = not in IoT Core yet (the first vend creates it). */
export type PolicySyncOutcome = PolicyOutcome | 'absent' | 'failed';

/**
 * Brings each policy in IoT Core up to the document its group renders now, so that a changed topic
 * template reaches devices that already have certificates (at start, on reload), not only at the next
 * vend. GetPolicy first: its ARN gives the partition, region and account to render with; a policy that
 * differs gets a new default version through ensurePolicy (CreatePolicy, then CreatePolicyVersion).
 */
export async function syncPolicies(policies: GroupPolicy[], deps: PolicySyncDeps): Promise<Map<string, PolicySyncOutcome>> {
  const outcomes = new Map<string, PolicySyncOutcome>();
  for (const policy of distinctByName(policies, deps.log)) {
    try {
      outcomes.set(policy.name, await syncOne(policy, deps));
    } catch (err) {
      // The next vend of a device in the group tries again (vending/steps.ts).
      deps.log.warn({ policy: policy.name, err: String((err as Error)?.message ?? err) }, 'policy not brought up to date; the next vend tries again');
      outcomes.set(policy.name, 'failed');
    }
  }
  return outcomes;
}

async function syncOne(policy: GroupPolicy, deps: PolicySyncDeps): Promise<PolicySyncOutcome> {
  // GetPolicy has no quota entry of its own: a sync makes one call per policy, not per device.
  const current = await deps.gate.call('GetPolicy', (s) => deps.provider.describePolicy(policy.name, s));
  if (!current) return 'absent';
  const document = policyDocument({ ...arnScope(current.policyArn), topicTemplates: policy.topicTemplates });
  if (samePolicy(current.document, document)) return 'unchanged';
  const outcome = await deps.gate.call('CreatePolicy', (s) => deps.provider.ensurePolicy(policy.name, document, s));
  if (outcome === 'updated') {
    deps.log.warn({ policy: policy.name }, 'policy updated to a new default version; devices see it only once IoT Core has propagated it (minutes)');
    deps.onPolicyUpdated?.(policy.name);
  }
  return outcome;
}

/** Groups sharing a policy name must render the same document; otherwise neither is synced. */
function distinctByName(policies: GroupPolicy[], log: Logger): GroupPolicy[] {
  const byName = new Map<string, GroupPolicy | null>();
  for (const p of policies) {
    const seen = byName.get(p.name);
    if (seen === undefined) byName.set(p.name, p);
    else if (seen && JSON.stringify(seen.topicTemplates) !== JSON.stringify(p.topicTemplates)) {
      log.warn({ policy: p.name }, 'groups sharing this policy name render different documents; not synced');
      byName.set(p.name, null);
    }
  }
  return [...byName.values()].filter((p): p is GroupPolicy => p !== null);
}

/** The groups whose policy renders differently in two configs (a reload). */
export function changedGroups(groups: string[], before: (g: string) => GroupPolicy, after: (g: string) => GroupPolicy): string[] {
  return groups.filter((g) => JSON.stringify(before(g)) !== JSON.stringify(after(g)));
}
