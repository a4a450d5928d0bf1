import type { Scenario } from '../lib/context.ts';
import { scenario as badInput } from './bad-input.ts';
import { scenario as bridgeCompare } from './bridge-compare.ts';
import { scenario as cluster } from './cluster.ts';
import { scenario as faults } from './faults.ts';
import { scenario as growth } from './growth.ts';
import { scenario as lowpower } from './lowpower.ts';
import { scenario as outboxCommit } from './outbox-commit.ts';
import { scenario as simImport } from './import.ts';
import { scenario as radius } from './radius.ts';
import { scenario as sessions } from './sessions.ts';
import { scenario as skeleton } from './skeleton.ts';
import { scenario as sleepy } from './sleepy.ts';
import { scenario as throughputHttp } from './throughput-http.ts';
import { scenario as threadBytes } from './thread-bytes.ts';
import { scenario as throughputMqtt } from './throughput-mqtt.ts';
import { scenario as tlsContexts } from './tls-contexts.ts';
import { scenario as upstreamClients } from './upstream-clients.ts';
import { scenario as vending } from './vending.ts';

/**
 * Every scenario `npm run bench` knows, by the name given on its command line, in the order `all` runs
 * them. A new scenario is a file in this folder exporting `scenario` and one line here.
 */
export const SCENARIOS: Record<string, Scenario> = {
  skeleton,
  import: simImport,
  radius,
  'throughput-mqtt': throughputMqtt,
  'bridge-compare': bridgeCompare,
  'throughput-http': throughputHttp,
  faults,
  'bad-input': badInput,
  lowpower,
  vending,
  sessions,
  growth,
  sleepy,
  'outbox-commit': outboxCommit,
  'thread-bytes': threadBytes,
  'tls-contexts': tlsContexts,
  'upstream-clients': upstreamClients,
  cluster,
};
