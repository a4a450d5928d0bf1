import Fastify from 'fastify';
import type { Logger } from 'pino';
import type { z } from 'zod';
import type { adminSection } from '../config/admin.ts';
import type { Db } from '../storage/db.ts';
import type { AuditLog } from '../storage/audit.ts';
import type { SimStore } from '../storage/sims.ts';
import type { Registry } from 'prom-client';

export type AdminConfig = z.infer<typeof adminSection>;

/** What the admin surface reads from and acts on in the running gateway. */
export interface AdminDeps {
  db: Db;
  sims: SimStore;
  audit: AuditLog;
  metrics: Registry;
  log: Logger;
  /** True when the database is open and every listener is up. */
  ready(): { ok: boolean; checks: Record<string, boolean> };
}

export interface AdminServer {
  port: number;
  close(): Promise<void>;
}

/** Starts the admin server: health and metrics for now. */
export async function startAdmin(config: AdminConfig, deps: AdminDeps): Promise<AdminServer> {
  const app = Fastify({ loggerInstance: deps.log, disableRequestLogging: true });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const r = deps.ready();
    return reply.code(r.ok ? 200 : 503).send({ status: r.ok ? 'ready' : 'not ready', checks: r.checks });
  });
  app.get('/metrics', async (_req, reply) => reply.type(deps.metrics.contentType).send(await deps.metrics.metrics()));
  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address();
  return { port: typeof address === 'object' && address ? address.port : config.port, close: () => app.close() };
}
