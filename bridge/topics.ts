/** Device topics and their mapping to upstream topics through a group's template. */

export interface TopicLimits {
  maxTopicBytes: number;
  maxTopicLevels: number;
}

export interface TopicVars {
  thing: string;
  imsi: string;
  imei: string;
  topic: string;
}

/** Fills a template such as devices/{thing}/{topic}. */
export function mapTopic(template: string, vars: TopicVars): string {
  return template.replace(/\{(thing|imsi|imei|topic)\}/g, (_m, k: keyof TopicVars) => vars[k]);
}

export type TopicProblem = 'topic_empty' | 'topic_wildcard' | 'topic_invalid' | 'topic_too_long' | 'topic_too_deep';

/**
 * Checks a topic a device publishes to, and the upstream topic it maps to, against IoT Core's rules
 * (at most 256 bytes and 8 levels, no wildcards in a publish, no reserved $ topics).
 */
export function checkPublishTopic(deviceTopic: string, upstreamTopic: string, limits: TopicLimits): TopicProblem | undefined {
  if (deviceTopic.length === 0) return 'topic_empty';
  if (/[#+]/.test(deviceTopic)) return 'topic_wildcard';
  if (deviceTopic.includes('\u0000') || deviceTopic.startsWith('$')) return 'topic_invalid';
  if (Buffer.byteLength(upstreamTopic) > limits.maxTopicBytes || Buffer.byteLength(deviceTopic) > limits.maxTopicBytes) return 'topic_too_long';
  // IoT Core does not count the levels of a leading $aws/... prefix, but devices cannot use $ topics.
  if (upstreamTopic.split('/').length > limits.maxTopicLevels) return 'topic_too_deep';
  return undefined;
}
