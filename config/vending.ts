import { z } from 'zod';

/** Certificate vending: the IoT Core control plane, names, retries and quotas. */
export const vendingSection = z
  .object({
    region: z.string().default('us-east-1').describe('AWS region of IoT Core'),
    endpoint: z.url().optional().describe('control-plane endpoint override (the sandbox sets it)'),
    credentials: z
      .object({ accessKeyId: z.string().min(1), secretAccessKey: z.string().min(1) })
      .strict()
      .optional()
      .describe('static credentials; omit to use the default AWS credential chain'),
    thingName: z.string().default('sim-{imsi}').describe('thing name template; placeholders {imsi} {group}'),
    policyName: z.string().default('simbridge-{group}').describe('policy name template per group'),
    retryDelayMs: z.number().int().positive().default(1000).describe('first delay before retrying a failed vend'),
    retryMaxDelayMs: z.number().int().positive().default(60_000).describe('longest delay between vend retries'),
  })
  .strict()
  .prefault({});
