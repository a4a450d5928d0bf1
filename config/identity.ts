import { z } from 'zod';

/** Where a listener learns who a device is. */
export const identitySource = z
  .enum(['radius', 'static', 'claimed'])
  .describe('radius = the source IP\'s RADIUS session; static = the static IP table; claimed = the device states IMSI/IMEI (labs, public APN over VPN)');

/** Fixed-IP SIMs: address or CIDR → IMSI. */
export const staticIdentitySection = z
  .array(
    z
      .object({
        address: z.string().describe('IP address or CIDR block of the SIM'),
        imsi: z.string().regex(/^\d{6,15}$/, 'an IMSI of 6-15 digits').describe('IMSI of the SIM using that address'),
      })
      .strict(),
  )
  .default([])
  .describe('static identity table: IP or CIDR → IMSI (the IMEI stays unknown unless the device claims it)');

/** RADIUS accounting from the operator's PGW/GGSN (RFC 2866). */
export const radiusSection = z
  .object({
    enabled: z.boolean().default(false).describe('listen for RADIUS accounting'),
    host: z.string().default('0.0.0.0').describe('address the accounting listener binds'),
    port: z.number().int().min(0).max(65535).default(1813).describe('RADIUS accounting UDP port'),
    clients: z
      .array(
        z
          .object({
            address: z.string().describe('NAS address or CIDR allowed to send accounting'),
            secret: z.string().min(1).describe('shared secret of that NAS'),
          })
          .strict(),
      )
      .default([])
      .describe('NAS clients allowed to send accounting; packets from anyone else are dropped'),
    sessionTimeoutMs: z.number().int().min(0).default(4 * 3600_000).describe('a session with no Start/Interim for this long expires (0 = never); also how long a stopped session is remembered against replays (a day when 0)'),
    replyCacheMs: z.number().int().positive().default(30_000).describe('how long a reply is kept to answer retransmissions'),
  })
  .strict()
  .prefault({});
