import type { FastifyPluginAsync } from 'fastify';
import type { AdminContext } from '../context.ts';

const readiness = {
  type: 'object',
  properties: {
    status: { type: 'string' },
    checks: { type: 'object', additionalProperties: { type: 'boolean' } },
    reasons: { type: 'object', description: 'why each failed check failed', additionalProperties: { type: 'string' } },
    warnings: { type: 'array', items: { type: 'string' }, description: 'ready, but unsafe: e.g. devices may claim any SIM (identity.allowInsecureClaims)' },
  },
} as const;

/** Liveness, readiness and Prometheus metrics: public, for probes and scrapers on the admin address. */
export function healthRoutes(ctx: AdminContext): FastifyPluginAsync {
  return async (app) => {
    app.get(
      '/healthz',
      {
        config: { access: 'public' },
        schema: {
          tags: ['operations'],
          summary: 'liveness: the process answers',
          response: { 200: { type: 'object', properties: { status: { type: 'string' } } } },
        },
      },
      async () => ({ status: 'ok' }),
    );
    app.get(
      '/readyz',
      {
        config: { access: 'public' },
        schema: {
          tags: ['operations'],
          summary: 'readiness: the database is open, its disk has room (storage.minFreeMb), every listener is up, IoT Core answers (DescribeEndpoint) and the last upstream CONNECT worked',
          response: {
            '2xx': readiness,
            503: readiness,
          },
        },
      },
      async (_req, reply) => {
        const r = ctx.deps.ready();
        return reply
          .code(r.ok ? 200 : 503)
          .send({ status: r.ok ? 'ready' : 'not ready', checks: r.checks, reasons: r.reasons ?? {}, ...(r.warnings?.length ? { warnings: r.warnings } : {}) });
      },
    );
    app.get(
      '/metrics',
      {
        config: { access: 'public' },
        schema: {
          tags: ['operations'],
          summary: 'Prometheus metrics (text exposition format)',
          produces: ['text/plain'],
          response: { 200: { type: 'string' } },
        },
      },
      async (_req, reply) => reply.type(ctx.deps.metrics.contentType).send(await ctx.deps.metrics.metrics()),
    );
  };
}
