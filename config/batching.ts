import cron from 'node-cron';
import { z } from 'zod';

/** How a group's readings are packed into upstream messages (docs/batching.md). */
export const batchingSection = z
  .object({
    policy: z
      .enum(['immediate', 'window', 'schedule'])
      .default('immediate')
      .describe('immediate = each message as it is; window = collect per device until a limit; schedule = collect and send on a cron schedule'),
    maxMessages: z.number().int().positive().default(100).describe('window: most readings in one batch'),
    maxBytes: z
      .number()
      .int()
      .min(256)
      .max(131072)
      .default(5120)
      .describe('most bytes of one batch, envelope and topic included (5120 = one IoT Core billing unit; at most 128 KB)'),
    maxDelayMs: z.number().int().positive().default(60_000).describe('window: longest a reading waits for its batch'),
    schedule: z
      .string()
      .default('0 * * * *')
      .refine((s) => cron.validate(s), 'not a valid cron expression')
      .describe('schedule: when batches are sent (cron, e.g. "0 * * * *" hourly)'),
    timezone: z
      .string()
      .default('UTC')
      .refine((tz) => {
        try {
          new Intl.DateTimeFormat('en', { timeZone: tz });
          return true;
        } catch {
          return false;
        }
      }, 'not an IANA time zone')
      .describe('schedule: time zone of the cron expression (IANA name, e.g. Europe/Berlin)'),
    topic: z.string().default('devices/{thing}/batch').describe('upstream topic of batches; placeholders {thing} {imsi} {imei}'),
  })
  .strict()
  .prefault({});

export type BatchingConfig = z.infer<typeof batchingSection>;
