/**
 * The least-privilege policy a group's devices get: connect only as their own thing (and only while the
 * certificate is attached to it), publish / subscribe / receive only on their own topics and their own
 * shadow. Policy variables make one policy serve every thing of the group.
 */
export function policyDocument(opts: { region: string; account: string; topicTemplates: string[] }): string {
  const arn = (kind: string, name: string) => `arn:aws:iot:${opts.region}:${opts.account}:${kind}/${name}`;
  const ownTopics = [...opts.topicTemplates.map(toPolicyPattern), '$aws/things/${iot:Connection.Thing.ThingName}/shadow/*'];
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
  config: { vending: { policyName: string }; groups: Record<string, { upstreamTopic: string; batching: { topic: string }; udpTopic?: string }>; sims: { defaultGroup: string } },
  group: string,
): { name: string; topicTemplates: string[] } {
  const g = config.groups[group] ?? config.groups[config.sims.defaultGroup]!;
  // Raw UDP datagrams go to udpTopic; listed only when the uplink template's wildcard does not cover it already.
  const at = g.upstreamTopic.indexOf('{topic}');
  const covered = (t: string) => at >= 0 && at === g.upstreamTopic.length - '{topic}'.length && t.startsWith(g.upstreamTopic.slice(0, at));
  const udp = g.udpTopic && !covered(g.udpTopic) ? [g.udpTopic] : [];
  return { name: fillName(config.vending.policyName, { group }), topicTemplates: [g.upstreamTopic, g.batching.topic, ...udp] };
}
