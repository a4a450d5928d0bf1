import { BlockList, isIP } from 'node:net';
import { validate as validCron } from 'node-cron';
import { z } from 'zod';
import { AddressTable } from '../lib/address-table.ts';

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

const loopback = new BlockList();
loopback.addSubnet('127.0.0.0', 8, 'ipv4');
loopback.addAddress('::1', 'ipv6');

/** True for an address only this host can reach (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  const family = isIP(host);
  return family !== 0 && loopback.check(host, family === 4 ? 'ipv4' : 'ipv6');
}

/** An address or CIDR block, checked the way lib/address-table.ts reads it. */
const addressOrBlock = z.string().superRefine((s, ctx) => {
  try {
    new AddressTable<true>().add(s, true);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});

/** The admin API, installer page, metrics and health endpoints. */
export const adminSection = z
  .object({
    enabled: z.boolean().default(true).describe('serve the admin API, installer page, /metrics and health'),
    host: z.string().default('127.0.0.1').describe('address the admin server binds (never the device ports); other than loopback it needs admin.tls or admin.allowPlainHttp'),
    port: z.number().int().min(0).max(65535).default(9090).describe('admin server port'),
    tls: z
      .object({
        certFile: z.string().min(1).describe('PEM certificate chain the admin server presents'),
        keyFile: z.string().min(1).describe('PEM private key of that certificate'),
      })
      .strict()
      .optional()
      .describe('serve the admin API over HTTPS (tokens are bearer headers: never send them in clear across a network)'),
    allowPlainHttp: z
      .boolean()
      .default(false)
      .describe('accept plain HTTP on an admin.host other than loopback: tokens then cross the network in clear'),
    trustProxy: z
      .array(addressOrBlock)
      .default([])
      .describe('addresses or CIDR blocks of reverse proxies in front of the admin server; their X-Forwarded-For names the client, which failed sign-ins are then counted against'),
    onlineWindowSeconds: z
      .number()
      .int()
      .positive()
      .default(900)
      .describe('a SIM without a network session counts as online this long after its last message'),
    auth: z
      .object({
        maxFailures: z.number().int().positive().default(10).describe('failed sign-ins allowed per client address, and per token prefix, within the window'),
        failureWindowSeconds: z
          .number()
          .int()
          .positive()
          .default(300)
          .describe('window of the failure count; a client address or token prefix over the limit gets 429 for invalid tokens until its window ends (a valid token is never refused)'),
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
  .superRefine((a, ctx) => {
    // Bearer tokens in clear on a network anyone can sniff hand over the fleet: refuse it unless asked for.
    if (a.enabled && !isLoopback(a.host) && !a.tls && !a.allowPlainHttp) {
      ctx.addIssue({
        code: 'custom',
        path: ['host'],
        message: `${a.host} is not a loopback address and the admin server has no TLS: set admin.tls, or bind 127.0.0.1 behind a TLS proxy, or set admin.allowPlainHttp: true to accept tokens in clear`,
      });
    }
  })
  .prefault({});
