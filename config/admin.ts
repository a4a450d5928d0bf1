import { validate as validCron } from 'node-cron';
import { z } from 'zod';

const days = (dflt: number, what: string) => z.number().int().min(0).default(dflt).describe(`${what}; 0 keeps them forever`);

/** Deleting old rows so the database does not grow without end. */
export const retentionSection = z
  .object({
    enabled: z.boolean().default(true).describe('delete old audit events, dead letters and ended network sessions on a schedule'),
    schedule: z
      .string()
      .refine((s) => validCron(s), 'not a cron expression')
      .default('23 4 * * *')
      .describe('when the retention job runs (cron, local time); default daily at 04:23'),
    auditDays: days(365, 'days audit events are kept'),
    deadLetterDays: days(30, 'days dead letters (messages IoT Core refused for good) are kept'),
    networkSessionDays: days(30, 'days ended network sessions are kept'),
  })
  .strict()
  .prefault({});

/** What logs may show of subscriber identifiers. Meant for the top level of the config (`privacy:`). */
export const privacySection = z
  .object({
    maskIdentifiers: z
      .boolean()
      .default(true)
      .describe('mask IMSI, IMEI, ICCID and MSISDN in logs (first 5 and last 2 digits stay)'),
  })
  .strict()
  .prefault({});

/** The admin API, installer page, metrics and health endpoints. */
export const adminSection = z
  .object({
    enabled: z.boolean().default(true).describe('serve the admin API, installer page, /metrics and health'),
    host: z.string().default('127.0.0.1').describe('address the admin server binds (never the device ports)'),
    port: z.number().int().min(0).max(65535).default(9090).describe('admin server port'),
    onlineWindowSeconds: z
      .number()
      .int()
      .positive()
      .default(900)
      .describe('a SIM without a network session counts as online this long after its last message'),
    auth: z
      .object({
        maxFailures: z.number().int().positive().default(10).describe('failed sign-ins allowed per source address within the window'),
        failureWindowSeconds: z
          .number()
          .int()
          .positive()
          .default(300)
          .describe('window of the failure count; an address over the limit is refused until its window ends'),
      })
      .strict()
      .prefault({}),
    import: z
      .object({
        batchRows: z.number().int().positive().max(50_000).default(1000).describe('SIM import rows committed per transaction'),
        maxReportedErrors: z.number().int().positive().default(1000).describe('row errors listed in an import report (all are counted)'),
        maxLineBytes: z.number().int().positive().default(65_536).describe('longest line of an import file; a longer one is reported as a failed row and skipped'),
      })
      .strict()
      .prefault({}),
    retention: retentionSection,
  })
  .strict()
  .prefault({});
