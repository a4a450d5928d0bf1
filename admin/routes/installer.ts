import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyPluginAsync } from 'fastify';

const dir = fileURLToPath(new URL('../installer/', import.meta.url));

// Script and styles come from files, never inline, so the policy can forbid inline code outright. The
// camera is allowed for barcode scanning; nothing may frame the page (it holds a bearer token).
const headers = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'permissions-policy': 'camera=(self)',
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
  'cache-control': 'no-cache',
};

const files: Array<{ url: string; file: string; type: string }> = [
  { url: '/installer', file: 'index.html', type: 'text/html; charset=utf-8' },
  { url: '/installer/installer.js', file: 'installer.js', type: 'text/javascript; charset=utf-8' },
  { url: '/installer/installer.css', file: 'installer.css', type: 'text/css; charset=utf-8' },
];

/** The installer page: static files, public (sign-in happens in the page, against the API). */
export function installerRoutes(): FastifyPluginAsync {
  return async (app) => {
    for (const f of files) {
      const body = readFileSync(join(dir, f.file));
      app.get(f.url, { config: { access: 'public' }, schema: { hide: true } }, async (_req, reply) => reply.headers(headers).type(f.type).send(body));
    }
    app.get('/', { config: { access: 'public' }, schema: { hide: true } }, async (_req, reply) => reply.redirect('/installer'));
  };
}
