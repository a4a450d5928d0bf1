import type { FastifyPluginAsync } from 'fastify';
import type { AdminContext } from '../context.ts';

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
          summary: 'readiness: the database is open, its disk has room (storage.minFreeMb) and every listener is up',
          response: {
            '2xx': { type: 'object', properties: { status: { type: 'string' }, checks: { type: 'object', additionalProperties: { type: 'boolean' } } } },
            503: { type: 'object', properties: { status: { type: 'string' }, checks: { type: 'object', additionalProperties: { type: 'boolean' } } } },
          },
        },
      },
      async (_req, reply) => {
        const r = ctx.deps.ready();
        return reply.code(r.ok ? 200 : 503).send({ status: r.ok ? 'ready' : 'not ready', checks: r.checks });
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
