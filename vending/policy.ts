/**
 * The least-privilege policy a group's devices get: connect only as their own thing (and only while the
 * certificate is attached to it), publish / subscribe / receive only on their own topics, their own
 * shadow and their own Jobs. Policy variables make one policy serve every thing of the group. With Basic Ingest the
 * group's topics are published only under that one rule's prefix (`$aws/rules/{rule}/...`) and still
 * received and subscribed to as they are (downlink).
 */
export function policyDocument(opts: { partition?: string; region: string; account: string; topicTemplates: string[]; basicIngestRule?: string | undefined }): string {
  // The partition comes from the certificate's ARN: aws-cn and aws-us-gov refuse arn:aws resources.
  const arn = (kind: string, name: string) => `arn:${opts.partition ?? 'aws'}:iot:${opts.region}:${opts.account}:${kind}/${name}`;
  const ownTopics = ownTopicPatterns(opts.topicTemplates);
  const connect = {
    Effect: 'Allow',
    Action: 'iot:Connect',
    Resource: arn('client', '${iot:Connection.Thing.ThingName}'),
    Condition: { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } },
  };
  const subscribe = { Effect: 'Allow', Action: 'iot:Subscribe', Resource: ownTopics.map((t) => arn('topicfilter', t)) };
  if (opts.basicIngestRule === undefined) {
    return JSON.stringify({ Version: '2012-10-17', Statement: [connect, { Effect: 'Allow', Action: ['iot:Publish', 'iot:Receive'], Resource: ownTopics.map((t) => arn('topic', t)) }, subscribe] });
  }
  const reserved = reservedTopicPatterns();
  const ingest = opts.topicTemplates.map((t) => `$aws/rules/${opts.basicIngestRule}/${toPolicyPattern(t)}`);
  const statement = [
    connect,
    { Effect: 'Allow', Action: 'iot:Publish', Resource: [...ingest, ...reserved].map((t) => arn('topic', t)) },
    { Effect: 'Allow', Action: 'iot:Receive', Resource: ownTopics.map((t) => arn('topic', t)) },
    subscribe,
  ];
  return JSON.stringify({ Version: '2012-10-17', Statement: statement });
}

/**
 * The policy of the gateway's own certificate (lifecycle events, docs/events.md): connect only as its
 * own thing, while the certificate is attached to it, and publish only under its event topic. It
 * subscribes to nothing and receives nothing.
 */
export function eventPolicyDocument(opts: { partition?: string; region: string; account: string; thingName: string; eventTopicRoot: string }): string {
  const arn = (kind: string, name: string) => `arn:${opts.partition ?? 'aws'}:iot:${opts.region}:${opts.account}:${kind}/${name}`;
  return JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      { Effect: 'Allow', Action: 'iot:Connect', Resource: arn('client', opts.thingName), Condition: { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } } },
      { Effect: 'Allow', Action: 'iot:Publish', Resource: arn('topic', `${opts.eventTopicRoot}/*`) },
    ],
  });
}

const THING_VAR = '${iot:Connection.Thing.ThingName}';

/** The thing's own reserved topics the policy grants: its shadow and its Jobs. */
function reservedTopicPatterns(): string[] {
  return [`$aws/things/${THING_VAR}/shadow/*`, `$aws/things/${THING_VAR}/jobs/*`];
}

/** The topic patterns the policy grants: the group's templates and the thing's own reserved topics. */
function ownTopicPatterns(topicTemplates: string[]): string[] {
  return [...topicTemplates.map(toPolicyPattern), ...reservedTopicPatterns()];
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

/** Two policy documents mean the same (whitespace and key order aside). */
export function samePolicy(a: string, b: string): boolean {
  try {
    return canonical(JSON.parse(a)) === canonical(JSON.parse(b));
  } catch {
    return a === b;
  }
}

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** Partition, region and account of an IoT ARN (arn:aws:iot:REGION:ACCOUNT:...). */
export function arnScope(arn: string): { partition: string; region: string; account: string } {
  const [, partition, , region, account] = arn.split(':');
  if (!partition || !region || !account) throw new Error(`not an IoT ARN: ${arn}`);
  return { partition, region, account };
}

/** The ARN partition of a region: cn-* → aws-cn, us-gov-* → aws-us-gov, else aws. */
export function partitionOf(region: string): string {
  return region.startsWith('cn-') ? 'aws-cn' : region.startsWith('us-gov-') ? 'aws-us-gov' : 'aws';
}

/** Fills a name template such as sim-{imsi} or simbridge-{group}. */
export function fillName(template: string, vars: Record<string, string>): string {
  return template.replace(/\{(\w+)\}/g, (m, k: string) => vars[k] ?? m);
}

/**
 * The policy a group's certificates get: its name and every topic template its devices use (uplink and
 * batches). The gateway and `simbridge vend` must agree: a policy that exists with another document
 * gets this one as a new default version.
 */
export function groupPolicy(
  config: {
    vending: { policyName: string };
    groups: Record<string, { upstreamTopic: string; batching: { topic: string }; udpTopic?: string; basicIngest?: { rule: string } | undefined }>;
    sims: { defaultGroup: string };
  },
  group: string,
): { name: string; topicTemplates: string[]; basicIngestRule?: string } {
  const g = config.groups[group] ?? config.groups[config.sims.defaultGroup]!;
  // Raw UDP datagrams go to udpTopic; listed only when the uplink template's wildcard does not cover it already.
  const at = g.upstreamTopic.indexOf('{topic}');
  const covered = (t: string) => at >= 0 && at === g.upstreamTopic.length - '{topic}'.length && t.startsWith(g.upstreamTopic.slice(0, at));
  const udp = g.udpTopic && !covered(g.udpTopic) ? [g.udpTopic] : [];
  const topicTemplates = [g.upstreamTopic, g.batching.topic, ...udp];
  const name = fillName(config.vending.policyName, { group });
  return g.basicIngest ? { name, topicTemplates, basicIngestRule: g.basicIngest.rule } : { name, topicTemplates };
}

/** IoT Core's limit on a policy document: 2,048 characters, whitespace not counted. */
export const MAX_POLICY_CHARS = 2048;

/**
 * The groups whose policy IoT Core would refuse as too long (MalformedPolicyException at the first
 * vend), as `config check` problems. Account ids are always 12 digits, so a placeholder measures true.
 */
export function policySizeProblems(config: Parameters<typeof groupPolicy>[0] & { vending: { region: string } }): string[] {
  return Object.keys(config.groups).flatMap((group) => {
    const policy = groupPolicy(config, group);
    const { region } = config.vending;
    const document = policyDocument({ partition: partitionOf(region), region, account: '000000000000', ...policy });
    const chars = document.replace(/\s/g, '').length;
    return chars > MAX_POLICY_CHARS
      ? [`groups.${group}: its policy ${policy.name} would be ${chars} characters (IoT Core allows ${MAX_POLICY_CHARS}, whitespace excluded): shorten upstreamTopic or batching.topic`]
      : [];
  });
}
