import type { FastifyPluginAsync } from 'fastify';
import { isIccid, normaliseImei } from '../../lib/ids.ts';
import type { SimStatus } from '../../storage/sims.ts';
import { actor, type AdminContext } from '../context.ts';
import { deviceView, deviceViewSchema } from '../device-view.ts';
import { authErrors, errorRef, IMSI_PATTERN, imsiParams, lockMode, simRef, simStatus, TAG_KEY_PATTERN, tags } from '../schemas.ts';
import { simJson } from '../sim-json.ts';
import { terminate } from '../terminate.ts';

interface ListQuery {
  group?: string;
  status?: SimStatus;
  online?: boolean;
  bound?: boolean;
  tag?: string;
  q?: string;
  limit: number;
  cursor?: string;
}

interface CreateBody {
  imsi: string;
  iccid?: string;
  msisdn?: string;
  group?: string;
  imei?: string;
  tags?: Record<string, string>;
  lockMode?: string | null;
}

interface PatchBody {
  group?: string;
  tags?: Record<string, string>;
  status?: SimStatus;
  lockMode?: string | null;
}

const security = [{ bearer: [] }];

/** The SIM registry: list with filters, create, the device view, and updates (terminating revokes). */
export function simRoutes(ctx: AdminContext): FastifyPluginAsync {
  const { deps, stores } = ctx;
  const onlineSince = () => Date.now() - ctx.config.onlineWindowSeconds * 1000;

  return async (app) => {
    app.get<{ Querystring: ListQuery }>(
      '/v1/sims',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['sims'],
          summary: 'list SIMs, filtered, in IMSI order; page on with cursor = nextCursor',
          security,
          querystring: {
            type: 'object',
            additionalProperties: false,
            properties: {
              group: { type: 'string' },
              status: simStatus,
              online: { type: 'boolean' },
              bound: { type: 'boolean', description: 'bound to an IMEI or not' },
              tag: { type: 'string', pattern: `${TAG_KEY_PATTERN.slice(0, -1)}=.*$`, description: 'key=value' },
              q: { type: 'string', pattern: '^[0-9]{1,20}$', description: 'digits within the IMSI, ICCID or MSISDN' },
              limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
              cursor: { type: 'string', pattern: IMSI_PATTERN },
            },
          },
          response: {
            200: {
              type: 'object',
              required: ['items', 'total', 'nextCursor'],
              properties: {
                items: { type: 'array', items: simRef },
                total: { type: 'integer', description: 'SIMs matching the filter' },
                nextCursor: { type: ['string', 'null'] },
              },
            },
            ...authErrors,
          },
        },
      },
      async (req) => {
        const q = req.query;
        const eq = q.tag?.indexOf('=') ?? -1;
        const page = await stores.sims.list(
          {
            group: q.group,
            status: q.status,
            online: q.online,
            bound: q.bound,
            q: q.q,
            tag: q.tag ? { key: q.tag.slice(0, eq), value: q.tag.slice(eq + 1) } : undefined,
          },
          { limit: q.limit, after: q.cursor, onlineSince: onlineSince() },
        );
        return { items: page.items.map((s) => simJson(s, s.online)), total: page.total, nextCursor: page.next };
      },
    );

    app.post<{ Body: CreateBody }>(
      '/v1/sims',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['sims'],
          summary: 'register one SIM (use /v1/sims/import for lists)',
          security,
          body: {
            type: 'object',
            required: ['imsi'],
            additionalProperties: false,
            properties: {
              imsi: { type: 'string', pattern: IMSI_PATTERN },
              iccid: { type: 'string', pattern: '^89[0-9]{17,18}$', description: 'checked with Luhn' },
              msisdn: { type: 'string', pattern: '^\\+?[0-9]{5,15}$' },
              group: { type: 'string', description: 'a group of the configuration; default sims.defaultGroup' },
              imei: { type: 'string', pattern: '^[0-9]{15,16}$', description: 'IMEI (Luhn-checked) or IMEISV to bind' },
              tags,
              lockMode,
            },
          },
          response: { 201: simRef, 400: errorRef, 409: errorRef, ...authErrors },
        },
      },
      async (req, reply) => {
        const b = req.body;
        const group = b.group ?? deps.defaultGroup();
        if (!deps.groups()[group]) return reply.code(400).send({ error: 'unknown_group', message: `group "${group}" is not in the configuration` });
        if (b.iccid && !isIccid(b.iccid)) return reply.code(400).send({ error: 'invalid_iccid', message: 'ICCID check digit is wrong (Luhn)' });
        let imei: string | undefined;
        if (b.imei) {
          const n = normaliseImei(b.imei);
          if ('problem' in n) return reply.code(400).send({ error: 'invalid_imei', message: `IMEI is not valid (${n.problem})` });
          imei = n.imei;
        }
        if (await stores.sims.get(b.imsi)) return reply.code(409).send({ error: 'sim_exists', message: `SIM ${b.imsi} is already registered` });
        const [outcome] = await stores.sims.upsertMany([{ imsi: b.imsi, group, thingName: deps.thingName(b.imsi, group), iccid: b.iccid, msisdn: b.msisdn, imei, tags: b.tags }], {
          force: false,
        });
        if (outcome!.result === 'failed') return reply.code(409).send({ error: `${outcome.field}_conflict`, message: outcome.message });
        if (b.lockMode !== undefined) await stores.sims.update(b.imsi, { lockMode: b.lockMode });
        const who = actor(req);
        await stores.audit.record('sim_created', b.imsi, { ...who, group });
        if (imei) await stores.audit.record('imei_bound', b.imsi, { imei, previous: null, ...who });
        return reply.code(201).send(simJson((await stores.sims.get(b.imsi))!));
      },
    );

    app.get<{ Params: { imsi: string } }>(
      '/v1/sims/:imsi',
      {
        config: { access: 'installer' },
        schema: {
          tags: ['sims'],
          summary: 'the device view: identity, lock, network session, certificate, upstream, outbox, recent events',
          security,
          params: imsiParams,
          response: { 200: deviceViewSchema, 404: errorRef, ...authErrors },
        },
      },
      async (req, reply) => {
        const view = await deviceView(req.params.imsi, {
          stores: ctx.stores,
          groups: deps.groups,
          upstreamState: deps.upstreamState,
          connected: deps.connected,
          onlineWindowMs: ctx.config.onlineWindowSeconds * 1000,
        });
        return view ?? reply.code(404).send({ error: 'not_found', message: `no SIM ${req.params.imsi}` });
      },
    );

    app.patch<{ Params: { imsi: string }; Body: PatchBody }>(
      '/v1/sims/:imsi',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['sims'],
          summary: 'change group, tags (replaced whole), status or lock mode; terminated is final and revokes the certificate',
          security,
          params: imsiParams,
          body: {
            type: 'object',
            additionalProperties: false,
            minProperties: 1,
            properties: { group: { type: 'string' }, tags, status: simStatus, lockMode },
          },
          response: {
            200: {
              type: 'object',
              required: ['sim'],
              properties: {
                sim: simRef,
                revocation: {
                  type: 'object',
                  description: 'present when this change terminated the SIM',
                  properties: { state: { type: 'string', enum: ['revoked', 'failed', 'unavailable'] }, message: { type: 'string' } },
                },
              },
            },
            400: errorRef,
            404: errorRef,
            409: errorRef,
            ...authErrors,
          },
        },
      },
      async (req, reply) => {
        const { imsi } = req.params;
        const b = req.body;
        const before = await stores.sims.get(imsi);
        if (!before) return reply.code(404).send({ error: 'not_found', message: `no SIM ${imsi}` });
        if (b.group !== undefined && !deps.groups()[b.group]) return reply.code(400).send({ error: 'unknown_group', message: `group "${b.group}" is not in the configuration` });
        if (before.status === 'terminated' && b.status && b.status !== 'terminated') {
          return reply.code(409).send({ error: 'sim_terminated', message: 'a terminated SIM cannot be reactivated: its certificate is revoked' });
        }
        const who = actor(req);
        const { status, ...rest } = b;
        let sim = (await stores.sims.update(imsi, rest))!;
        const changed = Object.fromEntries(Object.keys(rest).map((k) => [k, { from: before[k as keyof typeof rest], to: sim[k as keyof typeof rest] }]));
        if (Object.keys(changed).length) await stores.audit.record('sim_updated', imsi, { ...who, changed });
        let revocation: { state: 'revoked' | 'failed' | 'unavailable'; message?: string } | undefined;
        if (status && status !== before.status) {
          if (status === 'terminated') revocation = await terminate(stores, deps.revoke, imsi, who);
          else {
            await stores.sims.setStatus(imsi, status);
            await stores.audit.record('sim_status_changed', imsi, { from: before.status, to: status, ...who });
          }
          sim = (await stores.sims.get(imsi))!;
        }
        return { sim: simJson(sim), ...(revocation ? { revocation } : {}) };
      },
    );
  };
}
