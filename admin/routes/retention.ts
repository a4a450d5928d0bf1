import type { FastifyPluginAsync } from 'fastify';
import type { AdminContext } from '../context.ts';
import { authErrors } from '../schemas.ts';

/** Running the retention job now rather than at its scheduled time. */
export function retentionRoutes(ctx: AdminContext): FastifyPluginAsync {
  return async (app) => {
    app.post(
      '/v1/retention/run',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['operations'],
          summary: 'delete audit events, dead letters and ended network sessions older than their configured ages, now',
          security: [{ bearer: [] }],
          response: {
            200: {
              type: 'object',
              properties: {
                deleted: { type: 'object', properties: { audit: { type: 'integer' }, deadLetters: { type: 'integer' }, networkSessions: { type: 'integer' } } },
              },
            },
            ...authErrors,
          },
        },
      },
      async () => ({ deleted: await ctx.retention.runOnce() }),
    );
  };
}
