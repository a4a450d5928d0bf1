import type { FastifyPluginAsync } from 'fastify';
import type { AdminContext } from '../context.ts';
import { fleetStats, fleetStatsSchema } from '../fleet-stats.ts';
import { authErrors } from '../schemas.ts';

/** Fleet counts for `simbridge stats`. */
export function statsRoutes(ctx: AdminContext): FastifyPluginAsync {
  return async (app) => {
    app.get(
      '/v1/stats',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['operations'],
          summary: 'SIMs by status and group, online and bound counts, certificates, outbox, dead letters',
          security: [{ bearer: [] }],
          response: { 200: fleetStatsSchema, ...authErrors },
        },
      },
      async () => fleetStats(ctx.stores, Date.now() - ctx.config.onlineWindowSeconds * 1000),
    );
  };
}
