import type { FastifyPluginAsync } from 'fastify';
import { AUDIT_KINDS, isAuditKind } from '../../storage/audit.ts';
import type { AdminContext } from '../context.ts';
import { auditEventRef, authErrors, errorRef, IMSI_PATTERN, iso } from '../schemas.ts';

interface Query {
  imsi?: string;
  kind?: string;
  since?: string;
  until?: string;
  before?: number;
  limit: number;
}

/** The audit log: refusals, bindings, vending, admin actions and failed sign-ins. */
export function auditRoutes(ctx: AdminContext): FastifyPluginAsync {
  return async (app) => {
    app.get<{ Querystring: Query }>(
      '/v1/audit',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['audit'],
          summary: 'audit events newest first, by SIM, kind and time range; page on with before = nextBefore',
          security: [{ bearer: [] }],
          querystring: {
            type: 'object',
            additionalProperties: false,
            properties: {
              imsi: { type: 'string', pattern: IMSI_PATTERN },
              kind: { type: 'string', pattern: '^[a-z0-9_]+(,[a-z0-9_]+)*$', description: `one kind, or several separated by commas: ${AUDIT_KINDS.join(', ')}` },
              since: { type: 'string', format: 'date-time', description: 'inclusive' },
              until: { type: 'string', format: 'date-time', description: 'exclusive' },
              before: { type: 'integer', minimum: 1, description: 'event id: older events only' },
              limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
            },
          },
          response: {
            400: errorRef,
            200: {
              type: 'object',
              properties: { items: { type: 'array', items: auditEventRef }, nextBefore: { type: ['integer', 'null'] } },
            },
            ...authErrors,
          },
        },
      },
      async (req, reply) => {
        const q = req.query;
        const kinds = q.kind?.split(',');
        const unknown = kinds?.find((k) => !isAuditKind(k));
        if (unknown) return reply.code(400).send({ error: 'unknown_kind', message: `no audit kind "${unknown}"; kinds are ${AUDIT_KINDS.join(', ')}` });
        const page = await ctx.stores.audit.query({
          imsi: q.imsi,
          kinds: kinds?.filter(isAuditKind),
          since: q.since ? Date.parse(q.since) : undefined,
          until: q.until ? Date.parse(q.until) : undefined,
          before: q.before,
          limit: q.limit,
        });
        return { items: page.items.map((e) => ({ ...e, at: iso(e.at) })), nextBefore: page.nextBefore };
      },
    );
  };
}
