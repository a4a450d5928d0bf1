import type { FastifyPluginAsync } from 'fastify';
import type { AdminContext } from '../context.ts';
import { authErrors, errorRef } from '../schemas.ts';

const nodeSchema = {
  type: 'object',
  required: ['nodeId', 'alive', 'heartbeatAgeMs', 'startedAt', 'simsOwned', 'upstreamSessions', 'outboxRows'],
  properties: {
    nodeId: { type: 'string' },
    alive: { type: 'boolean', description: 'heartbeat younger than cluster.leaseMs' },
    heartbeatAgeMs: { type: 'integer', description: 'by the database clock' },
    startedAt: { type: 'string', format: 'date-time' },
    simsOwned: { type: 'integer', description: 'SIMs whose outbox and upstream session this node holds' },
    upstreamSessions: { type: ['integer', 'null'], description: 'as of its last heartbeat' },
    outboxRows: { type: 'integer', description: 'messages waiting for the SIMs it holds' },
  },
} as const;

export const clusterSchema = {
  type: 'object',
  required: ['storage', 'node', 'nodes'],
  properties: {
    storage: { type: 'string', enum: ['sqlite', 'postgres'] },
    node: { type: 'string', description: 'the node that answered' },
    nodes: { type: 'array', items: nodeSchema },
  },
} as const;

/** The gateway nodes sharing the database, for `simbridge cluster`. */
export function clusterRoutes(ctx: AdminContext): FastifyPluginAsync {
  return async (app) => {
    app.get(
      '/v1/cluster',
      {
        config: { access: 'operator' },
        schema: {
          tags: ['operations'],
          summary: 'Nodes sharing the database: heartbeat age, SIMs held, upstream sessions, outbox depth',
          security: [{ bearer: [] }],
          response: { 200: clusterSchema, 404: errorRef, ...authErrors },
        },
      },
      async (_req, reply) => {
        if (!ctx.deps.cluster) return reply.code(404).send({ error: 'not_found', message: 'this admin server is not part of a gateway' });
        return ctx.deps.cluster();
      },
    );
  };
}
