import { validate as validCron } from 'node-cron';
import { z } from 'zod';

const rate = (dflt: number, what: string) => z.number().positive().default(dflt).describe(what);

/**
 * Requests per second simbridge allows itself per IoT Core API. Defaults are the AWS account quotas
 * (the AWS IoT Core quotas page); accounts differ, so each one can be set.
 */
const quotas = z
  .object({
    CreateCertificateFromCsr: rate(15, 'CreateCertificateFromCsr requests per second (AWS: 15)'),
    AttachPolicy: rate(15, 'AttachPolicy requests per second (AWS: 15)'),
    CreateThing: rate(100, 'CreateThing requests per second (AWS: 100; 15 in older accounts)'),
    AttachThingPrincipal: rate(100, 'AttachThingPrincipal requests per second (AWS: 100; 15 in older accounts)'),
    UpdateCertificate: rate(10, 'UpdateCertificate requests per second (AWS: 10)'),
    CreatePolicy: rate(10, 'CreatePolicy requests per second (AWS: 10)'),
    DetachPolicy: rate(15, 'DetachPolicy requests per second (AWS: 15)'),
    DetachThingPrincipal: rate(100, 'DetachThingPrincipal requests per second (AWS: 100)'),
    DeleteCertificate: rate(10, 'DeleteCertificate requests per second (AWS: 10)'),
    ListCertificates: rate(10, 'ListCertificates requests per second (AWS: 10)'),
    DescribeCertificate: rate(10, 'DescribeCertificate requests per second (AWS: 10)'),
    DescribeEndpoint: rate(10, 'DescribeEndpoint requests per second (AWS: 10)'),
    CreateThingGroup: rate(10, 'CreateThingGroup requests per second (AWS: 10)'),
    AddThingToThingGroup: rate(100, 'AddThingToThingGroup requests per second (AWS: 100)'),
  })
  .strict()
  .prefault({});

const rotation = z
  .object({
    enabled: z.boolean().default(true).describe('re-vend certificates before they expire'),
    schedule: z
      .string()
      .refine((s) => validCron(s), 'not a cron expression')
      .default('17 3 * * *')
      .describe('when the rotation job runs (cron, local time); default daily at 03:17'),
    renewBeforeDays: z.number().int().positive().default(30).describe('re-vend certificates that expire within this many days'),
    maxAgeDays: z
      .number()
      .int()
      .min(0)
      .default(365)
      .describe('re-vend certificates older than this many days (IoT Core certificates from a CSR are valid until 2049, so expiry alone never triggers)'),
    retireAfterMs: z
      .number()
      .int()
      .min(0)
      .default(300_000)
      .describe('longest wait for the device session to move to the new certificate before the old one is retired'),
  })
  .strict()
  .prefault({});

const thingAttribute = z.enum(['imsi', 'group', 'imei', 'iccid', 'msisdn']);

/** Certificate vending: the IoT Core control plane, names, keys, quotas, retries and lifecycle. */
export const vendingSection = z
  .object({
    provider: z.enum(['aws-iot']).default('aws-iot').describe('who issues certificates: aws-iot = IoT Core (the sandbox too)'),
    region: z.string().default('us-east-1').describe('AWS region of IoT Core'),
    endpoint: z.url().optional().describe('control-plane endpoint override (the sandbox sets it)'),
    credentials: z
      .object({ accessKeyId: z.string().min(1), secretAccessKey: z.string().min(1) })
      .strict()
      .optional()
      .describe('static credentials; omit to use the default AWS credential chain'),
    thingName: z.string().default('sim-{imsi}').describe('thing name template; placeholders {imsi} {group}'),
    policyName: z.string().default('simbridge-{group}').describe('policy name template per group'),
    keyAlgorithm: z.enum(['ec-p256', 'rsa-2048']).default('ec-p256').describe('device key pair generated locally: EC P-256 or RSA 2048'),
    thingType: z.string().optional().describe('thing type given to new things; omit for untyped things (at most 3 attributes)'),
    thingGroup: z.string().optional().describe('thing group template new things join, e.g. simbridge-{group}; omit for none'),
    thingAttributes: z
      .array(thingAttribute)
      .default(['imsi', 'group'])
      .describe('SIM facts stored as thing attributes (policies can use them); at most 3 without a thing type'),
    quotas,
    burstSeconds: z
      .number()
      .min(0)
      .max(1)
      .default(0.5)
      .describe('short bursts allowed per API, in seconds of its quota: absorbs timer delays; keep within the account\'s burst'),
    concurrency: z.number().int().positive().default(64).describe('SIMs vended at the same time (the quotas pace them)'),
    maxQueue: z.number().int().positive().default(100_000).describe('most SIMs waiting for vending; beyond it callers retry later'),
    callTimeoutMs: z.number().int().positive().default(10_000).describe('time to wait for one IoT Core API answer'),
    callMaxAttempts: z.number().int().positive().default(8).describe('tries of one API call on throttling, 5xx and network errors'),
    callRetryDelayMs: z.number().int().positive().default(100).describe('first delay before retrying an API call (exponential, jittered)'),
    callRetryMaxDelayMs: z.number().int().positive().default(5_000).describe('longest delay between retries of an API call'),
    retryDelayMs: z.number().int().positive().default(1000).describe('first delay before retrying a failed vend'),
    retryMaxDelayMs: z.number().int().positive().default(60_000).describe('longest delay between vend retries'),
    leaseMs: z.number().int().positive().default(60_000).describe('a vending lease not renewed for this long may be taken over by another process'),
    orphanGraceMs: z
      .number()
      .int()
      .positive()
      .default(30_000)
      .describe('wait after an unanswered CreateCertificateFromCsr before looking for the certificate it may have made (> callTimeoutMs)'),
    orphanScanMarginMs: z
      .number()
      .int()
      .min(0)
      .default(60_000)
      .describe('how far before the request the orphan scan looks (clock difference with AWS)'),
    deleteRevoked: z.boolean().default(true).describe('delete revoked and retired certificates after deactivating and detaching them'),
    propagationWaitMs: z
      .number()
      .int()
      .min(0)
      .default(60_000)
      .describe('how long DeleteCertificate is retried while IoT Core still sees the certificate attached (detaching propagates in seconds)'),
    rotation,
  })
  .strict()
  .superRefine((v, ctx) => {
    if (!v.thingType && v.thingAttributes.length > 3) {
      ctx.addIssue({ code: 'custom', path: ['thingAttributes'], message: 'a thing without a thing type can have at most 3 attributes' });
    }
    if (v.orphanGraceMs <= v.callTimeoutMs) {
      ctx.addIssue({ code: 'custom', path: ['orphanGraceMs'], message: 'must be longer than callTimeoutMs, or a late answer could escape the scan' });
    }
  })
  .prefault({});

export type VendingConfig = z.infer<typeof vendingSection>;
export type ApiQuotas = z.infer<typeof quotas>;
