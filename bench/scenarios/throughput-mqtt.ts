import type { Ctx } from '../lib/context.ts';
import { throughput } from './throughput.ts';

/** Scenario 1: MQTT QoS 1 uplink through the whole path. */
export const throughputMqtt = (ctx: Ctx) => throughput(ctx, 'mqtt', 'throughput-mqtt');
