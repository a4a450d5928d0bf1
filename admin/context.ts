import type { FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { RouteAccess } from './auth/guard.ts';
import type { RetentionJob } from './retention.ts';
import type { AdminConfig, AdminDeps, AdminStores } from './types.ts';

/** What every route module receives. */
export interface AdminContext {
  deps: AdminDeps;
  config: AdminConfig;
  stores: AdminStores;
  /** Routes as registered, with the access each needs. */
  routes: RouteAccess[];
  retention: RetentionJob;
  log: Logger;
}

/** Who made a change, for audit rows: the token's holder, its id and role. */
export function actor(req: FastifyRequest): { by: string; token: string; role: string } {
  const p = req.principal!;
  return { by: p.name, token: p.tokenId, role: p.role };
}
