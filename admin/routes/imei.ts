import type { FastifyPluginAsync } from 'fastify';
import { normaliseImei, type ImeiProblem } from '../../lib/ids.ts';
import { actor, type AdminContext } from '../context.ts';
import { authErrors, errorRef, imsiParams, simRef } from '../schemas.ts';
import { simJson } from '../sim-json.ts';

const imeiProblems: Record<ImeiProblem, string> = {
  not_digits: 'the IMEI must contain digits only',
  bad_length: 'the IMEI must have 15 digits (or 16 for an IMEISV)',
  bad_check_digit: 'the last digit (Luhn check digit) does not match: re-read the IMEI',
};

const conflict = {
  type: 'object',
  required: ['error', 'message'],
  properties: { error: { type: 'string' }, message: { type: 'string' }, boundImei: { type: ['string', 'null'] } },
} as const;

const security = [{ bearer: [] }];

/** Binding a SIM to its device's IMEI, and undoing it: what an installer does in the field. */
export function imeiRoutes(ctx: AdminContext): FastifyPluginAsync {
  const { stores } = ctx;
  return async (app) => {
    app.put<{ Params: { imsi: string }; Body: { imei: string; force?: boolean } }>(
      '/v1/sims/:imsi/imei',
      {
        config: { access: 'installer' },
        schema: {
          tags: ['imei'],
          summary: 'bind the SIM to an IMEI (IMEISV accepted); refused when bound to another device unless force',
          security,
          params: imsiParams,
          body: {
            type: 'object',
            required: ['imei'],
            additionalProperties: false,
            properties: {
              imei: { type: 'string', maxLength: 32 },
              force: { type: 'boolean', default: false, description: 'replace a binding to another device (a device swap)' },
            },
          },
          response: {
            200: {
              type: 'object',
              required: ['sim', 'outcome'],
              properties: { sim: simRef, outcome: { type: 'string', enum: ['bound', 'unchanged'] }, previous: { type: ['string', 'null'] } },
            },
            400: errorRef,
            404: errorRef,
            409: conflict,
            ...authErrors,
          },
        },
      },
      async (req, reply) => {
        const { imsi } = req.params;
        const n = normaliseImei(req.body.imei.trim());
        if ('problem' in n) return reply.code(400).send({ error: 'invalid_imei', message: imeiProblems[n.problem] });
        const r = await stores.sims.bindImeiChecked(imsi, n.imei, req.body.force ?? false);
        switch (r.outcome) {
          case 'not_found':
            return reply.code(404).send({ error: 'not_found', message: `no SIM ${imsi}` });
          case 'terminated':
            return reply.code(409).send({ error: 'sim_terminated', message: 'this SIM is terminated and cannot be bound; use another SIM', boundImei: r.sim.boundImei });
          case 'conflict':
            return reply.code(409).send({
              error: 'imei_conflict',
              message: 'this SIM is already bound to another device; bind with force to replace it (device swap)',
              boundImei: r.sim.boundImei,
            });
        }
        if (r.outcome === 'bound') await stores.audit.record('imei_bound', imsi, { imei: n.imei, previous: r.previous, forced: r.previous !== null, ...actor(req) });
        return { sim: simJson(r.sim), outcome: r.outcome, previous: r.previous };
      },
    );

    app.delete<{ Params: { imsi: string } }>(
      '/v1/sims/:imsi/imei',
      {
        config: { access: 'installer' },
        schema: {
          tags: ['imei'],
          summary: 'unbind the SIM from its IMEI (a locked SIM then works nowhere until bound again)',
          security,
          params: imsiParams,
          response: { 200: { type: 'object', properties: { sim: simRef, previous: { type: ['string', 'null'] } } }, 404: errorRef, ...authErrors },
        },
      },
      async (req, reply) => {
        const { imsi } = req.params;
        const sim = await stores.sims.get(imsi);
        if (!sim) return reply.code(404).send({ error: 'not_found', message: `no SIM ${imsi}` });
        if (sim.boundImei) {
          await stores.sims.bindImei(imsi, null);
          await stores.audit.record('imei_unbound', imsi, { previous: sim.boundImei, ...actor(req) });
        }
        return { sim: simJson({ ...sim, boundImei: null }), previous: sim.boundImei };
      },
    );
  };
}
