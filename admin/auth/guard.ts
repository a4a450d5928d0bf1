import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Counter } from 'prom-client';
import type { AuditStore } from '../../storage/audit.ts';
import type { AdminTokenStore, Role } from '../../storage/tokens.ts';
import type { FailureLimiter } from './failure-limiter.ts';

/** Who may call a route: anyone (health, the installer page's files), or a token of at least this role. */
export type Access = 'public' | Role;

export interface Principal {
  tokenId: string;
  name: string;
  role: Role;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: Access;
  }
  interface FastifyRequest {
    principal: Principal | null;
  }
}

export interface RouteAccess {
  method: string;
  url: string;
  access: Access;
}

// operator can do everything an installer can.
const rank: Record<Role, number> = { installer: 1, operator: 2 };
export const allows = (have: Role, need: Role) => rank[have] >= rank[need];

export interface GuardOptions {
  tokens: AdminTokenStore;
  audit: AuditStore;
  limiter: FailureLimiter;
  failures: Counter<'reason'>;
}

/**
 * Every route must declare `config.access`; one that does not fails at registration, so no route can be
 * added unguarded. Returns the route table as registered (HEAD twins included), which /v1/routes serves
 * and the tests walk.
 */
export function installGuard(app: FastifyInstance, opts: GuardOptions): RouteAccess[] {
  const table: RouteAccess[] = [];
  app.decorateRequest('principal', null);
  app.addHook('onRoute', (route) => {
    const access = route.config?.access;
    if (!access) throw new Error(`admin route ${String(route.method)} ${route.url} declares no access (config.access)`);
    for (const method of [route.method].flat()) table.push({ method, url: route.url!, access });
  });
  // onRequest runs before the body is read: an unauthenticated upload is never parsed.
  app.addHook('onRequest', async (req, reply) => {
    if (req.is404) return;
    const access = req.routeOptions.config.access;
    if (access === 'public') return;
    if (!access) return deny(reply, 403, 'forbidden', 'route has no access rule'); // unreachable: onRoute refuses such routes

    const presented = bearer(req);
    const token = presented ? await opts.tokens.verify(presented) : undefined;
    if (token) {
      // A valid token is never throttled: others' failures from its address (a shared proxy, a NAT, an
      // attacker next door) must not lock its holder out. Tokens are 256 random bits, so a guesser who
      // sees this answer differ from a 429 has still never guessed one.
      if (!allows(token.role, access)) {
        await refused(req, 'insufficient_role', token.id);
        return deny(reply, 403, 'forbidden', `this needs the ${access} role`);
      }
      req.principal = { tokenId: token.id, name: token.name, role: token.role };
      return;
    }
    const keys = throttleKeys(req.ip, presented);
    const wait = Math.max(...keys.map((k) => opts.limiter.blockedFor(k)));
    if (wait > 0) {
      reply.header('retry-after', Math.ceil(wait / 1000));
      return deny(reply, 429, 'too_many_failures', 'too many failed sign-ins from this address or with this token; try again later');
    }
    await refused(req, presented ? 'unknown_token' : 'missing_token');
    for (const key of keys) if (opts.limiter.fail(key)) await opts.audit.record('admin_auth_throttled', null, throttledDetail(req, key));
    reply.header('www-authenticate', presented ? 'Bearer error="invalid_token"' : 'Bearer');
    return deny(reply, 401, 'unauthorized', presented ? 'the token is not valid' : 'a bearer token is required');
  });

  /** Counts and audits a refused request (the client address is the one the trusted proxies name). */
  async function refused(req: FastifyRequest, reason: string, tokenId?: string): Promise<void> {
    opts.failures.inc({ reason });
    const imsi = (req.params as { imsi?: string } | undefined)?.imsi;
    const via = req.socket.remoteAddress !== undefined && req.socket.remoteAddress !== req.ip ? { via: req.socket.remoteAddress } : {};
    const detail = { ip: req.ip, ...via, method: req.method, route: req.routeOptions.url, reason, ...(tokenId ? { token: tokenId } : {}) };
    await opts.audit.record('admin_auth_failed', imsi && /^\d{6,15}$/.test(imsi) ? imsi : null, detail);
  }
  return table;
}

// Long enough to tell tokens apart (sbt_ + 48 bits), short enough that guesses around one leaked in part
// (a photo of a screen, a cut log line) share it, from whatever address they come.
const TOKEN_PREFIX_CHARS = 12;

/**
 * What a failure is counted against: the client address, and the prefix of the token presented, so a
 * guesser spread over many addresses is stopped as well as one address hammering many tokens.
 */
function throttleKeys(ip: string, presented: string | undefined): string[] {
  return presented ? [`ip:${ip}`, `token:${presented.slice(0, TOKEN_PREFIX_CHARS)}`] : [`ip:${ip}`];
}

function throttledDetail(req: FastifyRequest, key: string): Record<string, string> {
  return key.startsWith('ip:') ? { ip: req.ip } : { ip: req.ip, tokenPrefix: key.slice('token:'.length) };
}

function bearer(req: FastifyRequest): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return m?.[1];
}

function deny(reply: FastifyReply, status: number, error: string, message: string) {
  return reply.code(status).send({ error, message });
}
