import type { FastifyPluginAsync } from 'fastify';
import { hashSecret } from '../../storage/secret-hash.ts';
import { actor, type AdminContext } from '../context.ts';
import { authErrors, errorRef, imsiParams, simRef } from '../schemas.ts';
import { generateSecret, SECRET_PATTERN } from '../sim-secret.ts';
import { simJson } from '../sim-json.ts';

const security = [{ bearer: [] }];

/**
 * The per-SIM secret that claimed identity checks (groups with requireSecret): set (generated unless
 * given) or cleared. Only its hash is stored; a generated secret is in this one answer and nowhere else.
 */
export function secretRoutes(ctx: AdminContext): FastifyPluginAsync {
  const { stores } = ctx;
  return async (app) => {
    app.put<{ Params: { imsi: string }; Body: { secret?: string } | undefined }>(
      '/v1/sims/:imsi/secret',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['sims'],
          summary: 'set the SIM\'s secret (MQTT password / HTTP bearer for claimed identity): generated and returned once, unless given',
          security,
          params: imsiParams,
          body: {
            type: 'object',
            additionalProperties: false,
            properties: { secret: { type: 'string', pattern: SECRET_PATTERN, description: 'a secret already in the device; omit to generate one' } },
          },
          response: {
            200: {
              type: 'object',
              required: ['sim'],
              properties: { sim: simRef, secret: { type: 'string', description: 'the generated secret: shown this once, stored only as a hash' } },
            },
            400: errorRef,
            404: errorRef,
            ...authErrors,
          },
        },
      },
      async (req, reply) => {
        const { imsi } = req.params;
        if (!(await stores.sims.get(imsi))) return reply.code(404).send({ error: 'not_found', message: `no SIM ${imsi}` });
        const given = req.body?.secret;
        const secret = given ?? generateSecret();
        await stores.sims.setSecretHash(imsi, await hashSecret(secret));
        await stores.audit.record('secret_set', imsi, { generated: given === undefined, ...actor(req) });
        return { sim: simJson((await stores.sims.get(imsi))!), ...(given === undefined ? { secret } : {}) };
      },
    );

    app.delete<{ Params: { imsi: string } }>(
      '/v1/sims/:imsi/secret',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['sims'],
          summary: 'remove the SIM\'s secret (a group that requires one then refuses the SIM)',
          security,
          params: imsiParams,
          response: { 200: { type: 'object', required: ['sim'], properties: { sim: simRef } }, 404: errorRef, ...authErrors },
        },
      },
      async (req, reply) => {
        const { imsi } = req.params;
        if (!await stores.sims.setSecretHash(imsi, null)) return reply.code(404).send({ error: 'not_found', message: `no SIM ${imsi}` });
        await stores.audit.record('secret_cleared', imsi, actor(req));
        return { sim: simJson((await stores.sims.get(imsi))!) };
      },
    );
  };
}
