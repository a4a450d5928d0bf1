// IoT Core's per-message limits, checked before policies. A breach closes the
// connection (MQTT 3.1.1 has no way to refuse a single PUBLISH).
export const MAX_PAYLOAD_BYTES = 128 * 1024;
export const MAX_TOPIC_BYTES = 256;
export const MAX_TOPIC_LEVELS = 8;
export const MAX_CLIENT_ID_BYTES = 128;
export const MAX_SUBSCRIPTIONS_PER_CONNECTION = 50;

/** Why IoT Core would refuse this PUBLISH, or undefined if it is within limits. */
export function publishViolation(topic: string, payload: Buffer | string, qos: number): string | undefined {
  if (qos > 1) return 'QoS 2 is not supported by IoT Core';
  const size = Buffer.byteLength(payload);
  if (size > MAX_PAYLOAD_BYTES) return `payload of ${size} bytes exceeds ${MAX_PAYLOAD_BYTES}`;
  return topicViolation(topic);
}

/** A Basic Ingest topic's reserved prefix: `$aws/rules/{rule name}/` (rule names: letters, digits, _). */
export const BASIC_INGEST = /^\$aws\/rules\/([a-zA-Z0-9_]{1,128})\//;

/**
 * Topic (or filter) size and depth. Reserved `$aws/...` topics are exempt from the level count, as their
 * fixed prefix is on AWS; a Basic Ingest topic is counted, bytes and levels, without its
 * `$aws/rules/{rule}/` prefix (IoT Core quotas: "Topic size", "Maximum number of slashes").
 */
export function topicViolation(topic: string): string | undefined {
  const ingest = BASIC_INGEST.exec(topic);
  const counted = ingest ? topic.slice(ingest[0].length) : topic;
  const size = Buffer.byteLength(counted);
  if (size > MAX_TOPIC_BYTES) return `topic of ${size} bytes exceeds ${MAX_TOPIC_BYTES}${ingest ? ' (after the Basic Ingest prefix)' : ''}`;
  const levels = counted.split('/').length;
  if ((ingest || !topic.startsWith('$aws/')) && levels > MAX_TOPIC_LEVELS) {
    return `topic has ${levels} levels, more than ${MAX_TOPIC_LEVELS}${ingest ? ' (after the Basic Ingest prefix)' : ''}`;
  }
  return undefined;
}
