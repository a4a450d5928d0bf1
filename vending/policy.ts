/**
 * The least-privilege policy a group's devices get: connect only as their own thing (and only while the
 * certificate is attached to it), publish / subscribe / receive only on their own topics and their own
 * shadow. Policy variables make one policy serve every thing of the group.
 */
export function policyDocument(opts: { region: string; account: string; topicTemplates: string[] }): string {
  const arn = (kind: string, name: string) => `arn:aws:iot:${opts.region}:${opts.account}:${kind}/${name}`;
  const ownTopics = ownTopicPatterns(opts.topicTemplates);
  const statement = [
    {
      Effect: 'Allow',
      Action: 'iot:Connect',
      Resource: arn('client', '${iot:Connection.Thing.ThingName}'),
      Condition: { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } },
    },
    { Effect: 'Allow', Action: ['iot:Publish', 'iot:Receive'], Resource: ownTopics.map((t) => arn('topic', t)) },
    { Effect: 'Allow', Action: 'iot:Subscribe', Resource: ownTopics.map((t) => arn('topicfilter', t)) },
  ];
  return JSON.stringify({ Version: '2012-10-17', Statement: statement });
}

const THING_VAR = '${iot:Connection.Thing.ThingName}';

/** The topic patterns the policy grants: the group's templates and the thing's own shadow. */
function ownTopicPatterns(topicTemplates: string[]): string[] {
  return [...topicTemplates.map(toPolicyPattern), `$aws/things/${THING_VAR}/shadow/*`];
}

/**
 * Whether the group's policy lets a thing subscribe to an upstream filter, evaluated the way IoT Core
 * does (policy variables from the thing's name and attributes, `*` and `?` as wildcards, MQTT `+` and
 * `#` literal). IoT Core answers a refused SUBSCRIBE by closing the connection, which a device's
 * subscription would take its uplink down with: a filter the policy refuses is never sent.
 */
export function policyAllowsSubscribe(topicTemplates: string[], filter: string, thing: { name: string; attributes: Record<string, string> }): boolean {
  return ownTopicPatterns(topicTemplates).some((pattern) => {
    let unresolved = false;
    const filled = pattern.replace(/\$\{iot:Connection\.Thing\.(ThingName|Attributes\[([^\]]+)\])\}/g, (_m, _k, attr?: string) => {
      const v = attr === undefined ? thing.name : thing.attributes[attr];
      if (v === undefined) unresolved = true;
      // A substituted value is literal: its * and ? are not wildcards.
      return (v ?? '').replace(/[*?]/g, (c) => `\u0000${c}`);
    });
    if (unresolved) return false;
    const re = filled
      .split('')
      .map((c, i, all) => (all[i - 1] === '\u0000' ? escapeRegExp(c) : c === '\u0000' ? '' : c === '*' ? '.*' : c === '?' ? '.' : escapeRegExp(c)))
      .join('');
    return new RegExp(`^${re}$`, 's').test(filter);
  });
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

/** devices/{thing}/{topic} → devices/${iot:Connection.Thing.ThingName}/* */
function toPolicyPattern(template: string): string {
  return template
    .replaceAll('{thing}', '${iot:Connection.Thing.ThingName}')
    .replaceAll('{imsi}', '${iot:Connection.Thing.Attributes[imsi]}')
    .replaceAll('{imei}', '${iot:Connection.Thing.Attributes[imei]}')
    .replaceAll('{topic}', '*');
}

/** Region and account of an IoT ARN (arn:aws:iot:REGION:ACCOUNT:...). */
export function arnScope(arn: string): { region: string; account: string } {
  const [, , , region, account] = arn.split(':');
  if (!region || !account) throw new Error(`not an IoT ARN: ${arn}`);
  return { region, account };
}

/** Fills a name template such as sim-{imsi} or simbridge-{group}. */
export function fillName(template: string, vars: Record<string, string>): string {
  return template.replace(/\{(\w+)\}/g, (m, k: string) => vars[k] ?? m);
}

/**
 * The policy a group's certificates get: its name and every topic template its devices use (uplink and
 * batches). The gateway and `simbridge vend` must agree: a policy is created once and never updated.
 */
export function groupPolicy(
  config: { vending: { policyName: string }; groups: Record<string, { upstreamTopic: string; batching: { topic: string } }>; sims: { defaultGroup: string } },
  group: string,
): { name: string; topicTemplates: string[] } {
  const g = config.groups[group] ?? config.groups[config.sims.defaultGroup]!;
  return { name: fillName(config.vending.policyName, { group }), topicTemplates: [g.upstreamTopic, g.batching.topic] };
}
