/**
 * Device topics and their mapping to upstream topics through a group's template, both ways.
 * A device writes and reads only inside its own namespace (the template puts its thing, IMSI or IMEI
 * around its topic), its own thing's shadow and its own thing's Jobs topics; the upstream session's
 * policy enforces the same again. A group with Basic Ingest publishes its uplink under
 * `$aws/rules/{rule}/` (no messaging charge in IoT Core); what devices subscribe to keeps the template.
 */

export interface TopicLimits {
  maxTopicBytes: number;
  maxTopicLevels: number;
}

export interface DeviceVars {
  thing: string;
  imsi: string;
  imei: string;
}

export type TopicProblem = 'topic_empty' | 'topic_wildcard' | 'topic_invalid' | 'topic_too_long' | 'topic_too_deep' | 'filter_invalid';

const shadowPrefix = (thing: string) => `$aws/things/${thing}/shadow/`;
const jobsPrefix = (thing: string) => `$aws/things/${thing}/jobs/`;

/**
 * The Jobs requests a device may publish (Jobs device MQTT API): get, start-next, {jobId}/get,
 * {jobId}/update. The answers and notify topics are IoT Core's to publish; devices subscribe to them.
 */
const JOBS_REQUEST = /^(get|start-next|[a-zA-Z0-9_-]{1,64}\/(get|update)|\$next\/get)$/;

/** IoT Core's rule names: letters, digits and underscores, at most 128 (CreateTopicRule). */
export const RULE_NAME = /^[a-zA-Z0-9_]{1,128}$/;

/** The Basic Ingest prefix of a rule: a publish under it goes to that rule only, never to subscribers. */
export const basicIngestPrefix = (rule: string) => `$aws/rules/${rule}/`;

/**
 * IoT Core leaves the `$aws/rules/{rule}/` prefix out when it counts a topic's bytes and levels
 * (AWS IoT Core quotas, "Topic size" and "Maximum number of slashes"): what is left is checked.
 */
export function withoutBasicIngestPrefix(topic: string): string {
  const m = /^\$aws\/rules\/[a-zA-Z0-9_]+\//.exec(topic);
  return m ? topic.slice(m[0].length) : topic;
}

/** What a group says about its topics: its template, raw UDP topic and Basic Ingest rule. */
export interface GroupTopicConfig {
  upstreamTopic: string;
  udpTopic?: string | undefined;
  basicIngest?: { rule: string } | undefined;
  batching: { topic: string; policy?: string };
}

/**
 * Whether the upstream topic a device's message goes to names the device's IMEI: its own template (or
 * the raw UDP one), or its group's batch topic when the group batches. `{imei}` is the IMEI the SIM is
 * bound to, the `imei` attribute of its thing that the policy matches (docs/policy.md): a SIM bound to
 * none has no such topic in IoT Core.
 */
export function publishNamesImei(group: GroupTopicConfig, deviceTopic: string, topics: DeviceTopics): boolean {
  if (topics.isOwnReserved(deviceTopic)) return false;
  const own = deviceTopic === UDP_DEVICE_TOPIC && group.udpTopic !== undefined ? group.udpTopic : group.upstreamTopic;
  return own.includes('{imei}') || ((group.batching.policy ?? 'immediate') !== 'immediate' && group.batching.topic.includes('{imei}'));
}

/** A group's topics bound to one device. */
export function groupTopics(group: GroupTopicConfig, vars: DeviceVars): DeviceTopics {
  return bound(group, vars).topics;
}

/** The group's batch topic filled for one device, under the group's Basic Ingest prefix when it has one. */
export function groupBatchTopic(group: GroupTopicConfig, vars: DeviceVars): string {
  const b = bound(group, vars);
  if (b.batchTopic === undefined) {
    const filled = fillTemplate(group.batching.topic, vars);
    b.batchTopic = group.basicIngest ? basicIngestPrefix(group.basicIngest.rule) + filled : filled;
  }
  return b.batchTopic;
}

const fillTemplate = (template: string, vars: DeviceVars) => template.replace(/\{(thing|imsi|imei)\}/g, (_m, k: keyof DeviceVars) => vars[k]);

/** A group's templates filled for one device. */
interface Bound {
  thing: string;
  imei: string;
  topics: DeviceTopics;
  batchTopic?: string;
}

/**
 * Filled templates per group and device, reused from message to message (filling them was regular
 * expressions and objects on every message, in and out). A config reload makes new group objects, so an
 * entry never outlives its template; past BOUND_PER_GROUP devices a group's entries start over.
 */
const boundPerGroup = new WeakMap<GroupTopicConfig, Map<string, Bound>>();
const BOUND_PER_GROUP = 50_000;

function bound(group: GroupTopicConfig, vars: DeviceVars): Bound {
  let perImsi = boundPerGroup.get(group);
  if (!perImsi) boundPerGroup.set(group, (perImsi = new Map()));
  const known = perImsi.get(vars.imsi);
  if (known && known.thing === vars.thing && known.imei === vars.imei) return known;
  if (perImsi.size >= BOUND_PER_GROUP) perImsi.clear();
  const fresh: Bound = { thing: vars.thing, imei: vars.imei, topics: new DeviceTopics(group.upstreamTopic, vars, group.udpTopic, group.basicIngest?.rule) };
  perImsi.set(vars.imsi, fresh);
  return fresh;
}

/**
 * Device topic under which a raw UDP datagram is stored: a `$` topic no device can publish to (MQTT and
 * HTTP refuse `$` topics), mapped upstream through the group's `udpTopic` instead of its template.
 */
export const UDP_DEVICE_TOPIC = '$udp';

/** A group template bound to one device: devices/{thing}/{topic} with the device's own values filled in. */
export class DeviceTopics {
  private readonly prefix: string;
  private readonly suffix: string;
  private readonly udpTopic: string | undefined;
  /** `$aws/rules/{rule}/` when the group uses Basic Ingest, else ''. */
  private readonly ingestPrefix: string;
  private readonly shadowPrefix: string;
  private readonly jobsPrefix: string;

  constructor(
    template: string,
    vars: DeviceVars,
    udpTemplate?: string,
    basicIngestRule?: string,
  ) {
    this.ingestPrefix = basicIngestRule === undefined ? '' : basicIngestPrefix(basicIngestRule);
    this.shadowPrefix = shadowPrefix(vars.thing);
    this.jobsPrefix = jobsPrefix(vars.thing);
    const filled = fillTemplate(template, vars);
    this.udpTopic = udpTemplate === undefined ? undefined : fillTemplate(udpTemplate, vars);
    const at = filled.indexOf('{topic}');
    this.prefix = at < 0 ? filled : filled.slice(0, at);
    this.suffix = at < 0 ? '' : filled.slice(at + '{topic}'.length);
  }

  /** The device's own shadow and Jobs topics pass through as they are (the thing's reserved topics). */
  isOwnReserved(topic: string): boolean {
    return topic.startsWith('$') && (topic.startsWith(this.shadowPrefix) || topic.startsWith(this.jobsPrefix));
  }

  /** A topic of the thing's own Jobs that only IoT Core publishes (answers, notify): devices may not. */
  private isJobsAnswer(topic: string): boolean {
    return topic.startsWith(this.jobsPrefix) && !JOBS_REQUEST.test(topic.slice(this.jobsPrefix.length));
  }

  /** Upstream topic (or filter) for a device topic (or filter), as subscriptions see it. */
  toUpstream(deviceTopic: string): string {
    if (deviceTopic === UDP_DEVICE_TOPIC && this.udpTopic !== undefined) return this.udpTopic;
    return this.isOwnReserved(deviceTopic) ? deviceTopic : this.prefix + deviceTopic + this.suffix;
  }

  /**
   * Upstream topic a device's message is published to: toUpstream, under the group's Basic Ingest
   * prefix when it has one. The thing's own reserved topics (shadow) are services, not rules: never prefixed.
   */
  publishTopic(deviceTopic: string): string {
    const upstream = this.toUpstream(deviceTopic);
    return this.ingestPrefix && !this.isOwnReserved(deviceTopic) ? this.ingestPrefix + upstream : upstream;
  }

  /** Device topic for an upstream topic, or undefined when it is not in the device's namespace. */
  toDevice(upstreamTopic: string): string | undefined {
    if (this.isOwnReserved(upstreamTopic)) return upstreamTopic;
    if (!upstreamTopic.startsWith(this.prefix) || !upstreamTopic.endsWith(this.suffix)) return undefined;
    const inner = upstreamTopic.slice(this.prefix.length, upstreamTopic.length - this.suffix.length);
    return inner.length > 0 ? inner : undefined;
  }

  /**
   * Checks a topic a device publishes to, and the upstream topic it maps to, against IoT Core's rules
   * (at most 256 bytes and 8 levels, no wildcards in a publish, no reserved $ topics but its own shadow
   * and its own Jobs requests).
   */
  checkPublish(deviceTopic: string, limits: TopicLimits): TopicProblem | undefined {
    if (deviceTopic.length === 0) return 'topic_empty';
    if (deviceTopic === UDP_DEVICE_TOPIC && this.udpTopic !== undefined) return this.checkSize(this.publishTopic(deviceTopic), limits);
    if (/[#+]/.test(deviceTopic)) return 'topic_wildcard';
    if (deviceTopic.includes('\u0000') || (deviceTopic.startsWith('$') && !this.isOwnReserved(deviceTopic))) return 'topic_invalid';
    if (this.isJobsAnswer(deviceTopic)) return 'topic_invalid';
    return this.checkSize(this.publishTopic(deviceTopic), limits);
  }

  /** Checks a filter a device subscribes to: wildcards only as whole levels, '#' last, nothing outside its namespace. */
  checkSubscribe(filter: string, limits: TopicLimits): TopicProblem | undefined {
    if (filter.length === 0) return 'topic_empty';
    if (filter.includes('\u0000') || (filter.startsWith('$') && !this.isOwnReserved(filter))) return 'topic_invalid';
    const levels = filter.split('/');
    for (const [i, level] of levels.entries()) {
      if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) return 'filter_invalid';
      if (level.includes('+') && level !== '+') return 'filter_invalid';
    }
    // A '#' followed by a suffix would reach beyond the device's namespace.
    if (filter.endsWith('#') && this.suffix && !this.isOwnReserved(filter)) return 'filter_invalid';
    return this.checkSize(this.toUpstream(filter), limits);
  }

  private checkSize(upstream: string, limits: TopicLimits): TopicProblem | undefined {
    const counted = withoutBasicIngestPrefix(upstream);
    if (Buffer.byteLength(counted) > limits.maxTopicBytes) return 'topic_too_long';
    if (counted.split('/').length > limits.maxTopicLevels) return 'topic_too_deep';
    return undefined;
  }
}
