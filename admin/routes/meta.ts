import type { FastifyPluginAsync } from 'fastify';
import type { AdminContext } from '../context.ts';
import { authErrors } from '../schemas.ts';

/** The API's own description: OpenAPI document, route table with access rules, and the caller's token. */
export function metaRoutes(ctx: AdminContext): FastifyPluginAsync {
  return async (app) => {
    app.get(
      '/openapi.json',
      { config: { access: 'public' }, schema: { hide: true } },
      // Generated from the route schemas; public like any API documentation, it holds no data.
      async () => app.swagger(),
    );
    app.get(
      '/v1/routes',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['meta'],
          summary: 'every route of this server and the access it needs',
          security: [{ bearer: [] }],
          response: {
            200: {
              type: 'object',
              properties: {
                routes: {
                  type: 'array',
                  items: { type: 'object', properties: { method: { type: 'string' }, url: { type: 'string' }, access: { type: 'string' } } },
                },
              },
            },
            ...authErrors,
          },
        },
      },
      async () => ({ routes: ctx.routes }),
    );
    app.get(
      '/v1/whoami',
      {
        config: { access: 'installer' },
        schema: {
          tags: ['meta'],
          summary: 'the token in use: its id, holder and role (the installer page signs in with it)',
          security: [{ bearer: [] }],
          response: {
            200: { type: 'object', properties: { id: { type: 'string' }, name: { type: 'string' }, role: { type: 'string' } } },
            ...authErrors,
          },
        },
      },
      async (req) => ({ id: req.principal!.tokenId, name: req.principal!.name, role: req.principal!.role }),
    );
  };
}
