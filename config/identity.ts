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

/** How a listener may learn identity, and whether device claims may stand in for the network. */
export const identitySection = z
  .object({
    static: staticIdentitySection,
    allowInsecureClaims: z
      .boolean()
      .default(false)
      .describe('outside the sandbox, allow claimed identity without per-SIM secrets, or beside a radius/static listener (labs only; reported at start and in /readyz)'),
  })
  .strict()
  .prefault({});

/** Whether the CoAP listener runs: on by default in the sandbox only. */
export function coapEnabled(c: { mode: string; listeners: { coap: { enabled?: boolean } } }): boolean {
  return c.listeners.coap.enabled ?? c.mode === 'sandbox';
}

/** What the identity findings look at (a slice of Config, kept structural to avoid an import cycle). */
interface IdentityView {
  mode: 'sandbox' | 'aws';
  listeners: Record<'mqtt' | 'http', { identity: z.infer<typeof identitySource> }> & {
    coap: { enabled?: boolean; identity: z.infer<typeof identitySource> };
    udp: { enabled: boolean; identity: string };
  };
  groups: Record<string, { requireSecret: boolean; bindClaimedImei: boolean }>;
  identity: { allowInsecureClaims: boolean };
}

/**
 * A weakness in who-is-who: `refused` stops the configuration (outside the sandbox, not opted in);
 * `insecure` runs because identity.allowInsecureClaims (or a group) says so, and is shouted about;
 * `note` is the sandbox, where claims are the point.
 */
export interface IdentityFinding {
  path: string[];
  severity: 'refused' | 'insecure' | 'note';
  message: string;
}

/** One line for the banner, `config check` and /readyz: severity, key path, what is wrong. */
export const describeFinding = (f: IdentityFinding): string => `${f.severity.toUpperCase()} ${f.path.join('.')}: ${f.message}`;

export function identityFindings(c: IdentityView): IdentityFinding[] {
  const findings: IdentityFinding[] = [];
  const severity = c.mode === 'sandbox' ? 'note' : c.identity.allowInsecureClaims ? 'insecure' : 'refused';
  const optIn =
    severity === 'refused' ? '; give every group requireSecret: true, or set identity.allowInsecureClaims: true for a lab' : severity === 'note' ? ' (allowed in the sandbox; mode: aws refuses it)' : '';
  // Every listener that runs: a claimed one anywhere is a way around the network identity of the others.
  const listeners = [
    ...(['mqtt', 'http'] as const).map((name) => ({ name, identity: c.listeners[name].identity as string })),
    ...(coapEnabled(c) ? [{ name: 'coap', identity: c.listeners.coap.identity as string }] : []),
    ...(c.listeners.udp.enabled ? [{ name: 'udp', identity: c.listeners.udp.identity }] : []),
  ];
  const network = listeners.find((l) => l.identity !== 'claimed');
  const groups = Object.entries(c.groups);
  const open = groups.filter(([, g]) => !g.requireSecret).map(([name]) => name);
  for (const { name, identity } of listeners) {
    if (identity !== 'claimed') continue;
    const path = ['listeners', name, 'identity'];
    if (open.length) {
      findings.push({
        path,
        severity,
        message: `claimed identity without per-SIM secrets (requireSecret is off in ${open.length > 1 ? 'groups' : 'group'} ${open.join(', ')}): anyone who reaches this port can act as any of their SIMs${optIn}`,
      });
    }
    if (network) {
      findings.push({
        path,
        severity,
        message: `claimed beside ${network.identity} identity on listeners.${network.name}: devices can go around the network identity through this port${severity === 'refused' ? '; use one identity on both listeners, or set identity.allowInsecureClaims: true' : severity === 'note' ? ' (allowed in the sandbox; mode: aws refuses it)' : ''}`,
      });
    }
  }
  if (listeners.some((l) => l.identity === 'claimed')) {
    for (const [name, g] of groups) {
      if (g.bindClaimedImei) {
        findings.push({
          path: ['groups', name, 'bindClaimedImei'],
          severity: c.mode === 'sandbox' || g.requireSecret ? 'note' : 'insecure',
          message: 'a claimed IMEI binds the SIM on first contact: whoever claims the SIM first locks its real device out',
        });
      }
    }
  }
  return findings;
}
