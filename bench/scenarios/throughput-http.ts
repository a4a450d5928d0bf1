import type { Scenario } from '../lib/context.ts';
import { throughput, THROUGHPUT_GOALS } from './throughput.ts';

/** Scenario 3: scenario 1 over HTTP POST /topics/{topic}?qos=1 with keep-alive connections. */
export const scenario: Scenario = {
  title: 'HTTP keep-alive uplink throughput and ack latency, 1,000 devices (and 100)',
  goals: THROUGHPUT_GOALS,
  run: (ctx) => throughput(ctx, 'http', 'throughput-http'),
};
