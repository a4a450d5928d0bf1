import type { Ctx } from '../lib/context.ts';
import { throughput } from './throughput.ts';

/** Scenario 3: scenario 1 over HTTP POST /topics/{topic}?qos=1 with keep-alive connections. */
export const throughputHttp = (ctx: Ctx) => throughput(ctx, 'http', 'throughput-http');
