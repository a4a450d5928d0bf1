import type { Scenario } from '../lib/context.ts';
import { throughput, THROUGHPUT_GOALS } from './throughput.ts';

/** Scenario 1: MQTT QoS 1 uplink through the whole path. */
export const scenario: Scenario = {
  title: 'MQTT QoS 1 uplink throughput and ack latency, 1,000 devices (and 100)',
  goals: THROUGHPUT_GOALS,
  run: (ctx) => throughput(ctx, 'mqtt', 'throughput-mqtt'),
};
