import type { FastifyPluginAsync } from 'fastify';
import type { AdminContext } from '../context.ts';
import { authErrors, simRef } from '../schemas.ts';
import { simJson } from '../sim-json.ts';

/** Finding a SIM from what is printed on it: the installer page's search box. */
export function lookupRoutes(ctx: AdminContext): FastifyPluginAsync {
  return async (app) => {
    app.get<{ Querystring: { q: string } }>(
      '/v1/lookup',
      {
        config: { access: 'installer' },
        schema: {
          tags: ['sims'],
          summary: 'find SIMs by whole IMSI or ICCID, or by the last digits (4 or more) of the IMSI, ICCID or MSISDN',
          security: [{ bearer: [] }],
          querystring: {
            type: 'object',
            required: ['q'],
            additionalProperties: false,
            properties: { q: { type: 'string', pattern: '^[0-9]{4,20}$' } },
          },
          response: { 200: { type: 'object', properties: { items: { type: 'array', items: simRef } } }, ...authErrors },
        },
      },
      async (req) => ({ items: (await ctx.stores.sims.search(req.query.q, 10)).map((s) => simJson(s)) }),
    );
  };
}
