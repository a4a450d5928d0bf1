// JSON schemas shared by the admin routes: they validate requests, shape responses and document the
// API (/openapi.json). Times in responses are ISO 8601 strings.

export const IMSI_PATTERN = '^[0-9]{6,15}$';
export const TAG_KEY_PATTERN = '^[A-Za-z0-9_.:-]{1,64}$';

const time = { type: 'string', format: 'date-time' } as const;
const nullableTime = { type: ['string', 'null'], format: 'date-time' } as const;

export const errorBody = {
  $id: 'Error',
  type: 'object',
  required: ['error', 'message'],
  properties: { error: { type: 'string', description: 'machine-readable reason' }, message: { type: 'string' } },
} as const;
export const errorRef = { $ref: 'Error#' } as const;

/** The refusals the guard may answer any token-protected route with. */
export const authErrors = { 401: errorRef, 403: errorRef, 429: errorRef } as const;

export const imsiParams = {
  type: 'object',
  required: ['imsi'],
  properties: { imsi: { type: 'string', pattern: IMSI_PATTERN, description: 'IMSI, 6-15 digits' } },
} as const;

export const tags = {
  type: 'object',
  description: 'free-form labels',
  propertyNames: { pattern: TAG_KEY_PATTERN },
  additionalProperties: { type: 'string', maxLength: 256 },
  maxProperties: 50,
} as const;

export const simStatus = { type: 'string', enum: ['active', 'suspended', 'terminated'] } as const;
export const lockMode = { type: ['string', 'null'], enum: ['locked', 'first-contact', 'any', null], description: 'per-SIM IMEI lock override; null = the group\'s' } as const;

export const sim = {
  $id: 'Sim',
  type: 'object',
  required: ['imsi', 'group', 'status', 'thingName', 'tags', 'createdAt'],
  properties: {
    imsi: { type: 'string' },
    iccid: { type: ['string', 'null'] },
    msisdn: { type: ['string', 'null'] },
    group: { type: 'string' },
    status: simStatus,
    boundImei: { type: ['string', 'null'], description: '15-digit IMEI the SIM is locked to' },
    lockMode,
    thingName: { type: 'string' },
    tags,
    hasSecret: { type: 'boolean' },
    createdAt: time,
    lastSeenAt: nullableTime,
    online: { type: 'boolean' },
  },
} as const;
export const simRef = { $ref: 'Sim#' } as const;

export const auditEvent = {
  $id: 'AuditEvent',
  type: 'object',
  required: ['id', 'at', 'kind'],
  properties: {
    id: { type: 'integer' },
    at: time,
    imsi: { type: ['string', 'null'] },
    kind: { type: 'string' },
    detail: { type: 'object', additionalProperties: true },
  },
} as const;
export const auditEventRef = { $ref: 'AuditEvent#' } as const;

/** Schemas registered once with app.addSchema so routes can refer to them by $id. */
export const sharedSchemas = [errorBody, sim, auditEvent];

export const iso = (ms: number | null | undefined): string | null => (ms === null || ms === undefined ? null : new Date(ms).toISOString());
