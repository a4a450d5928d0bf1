import { hostname } from 'node:os';
import { z } from 'zod';

/** Every fleet event kind the gateway publishes (docs/events.md has one schema per kind). */
export const EVENT_KINDS = [
  'first_contact',
  'certificate_vended',
  'certificate_rotated',
  'certificate_revoked',
  'imei_mismatch',
  'sim_suspended',
  'sim_terminated',
  'network_session_start',
  'network_session_stop',
  'message_dead_lettered',
  'message_dropped_quota',
] as const;

export type EventKind = (typeof EVENT_KINDS)[number];

// A gateway name is a thing-name part and one topic level: IoT Core thing names allow [a-zA-Z0-9:_-],
// and a topic level must not hold / + #. Colons are left out so the name also fits a policy name.
const GATEWAY_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/** This host's name as a gateway name: characters IoT Core refuses become "-". */
export function defaultGatewayName(host = hostname()): string {
  const name = host.split('.')[0]!.replace(/[^a-zA-Z0-9_-]/g, '-').slice(0, 64);
  return name || 'simbridge';
}

/** Fleet lifecycle events published as the gateway itself (docs/events.md). */
export const eventsSection = z
  .object({
    enabled: z
      .boolean()
      .default(false)
      .describe('publish fleet lifecycle events as the gateway\'s own thing (off by default: it vends one more thing, certificate and policy, and each event is a billed message)'),
    gateway: z
      .string()
      .regex(GATEWAY_NAME, 'letters, digits, _ and -, at most 64')
      .default(defaultGatewayName)
      .describe('this gateway\'s name in its thing name and event topics (default: the host name); give each gateway on SQLite its own, and every node on one PostgreSQL database (storage.url) the same: they publish as one (docs/events.md)'),
    kinds: z
      .array(z.enum(EVENT_KINDS))
      .default([...EVENT_KINDS])
      .describe('which event kinds to publish (default all)'),
    topicPrefix: z
      .string()
      .regex(/^[a-zA-Z0-9_-]+(\/[a-zA-Z0-9_-]+)*$/, 'topic levels of letters, digits, _ and -, no wildcards')
      .default('simbridge')
      .describe('events go to {topicPrefix}/{gateway}/events/{kind}'),
    thingName: z.string().default('simbridge-{gateway}').describe('the gateway\'s own thing name template; placeholder {gateway}'),
    policyName: z.string().default('simbridge-{gateway}-events').describe('the policy of the gateway\'s certificate (publish on its event topics only); placeholder {gateway}'),
    retryDelayMs: z.number().int().positive().default(1_000).describe('first wait before publishing events again after a failure (doubles up to 60 s)'),
  })
  .strict()
  .prefault({});

export type EventsConfig = z.infer<typeof eventsSection>;
