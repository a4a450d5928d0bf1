// The HTTP side of the control plane: matches restJson1 routes (method + path
// template, as in the SDK's `http` traits), runs fault injection, and writes
// AWS-style responses. Errors carry `x-amzn-ErrorType` and a `{"message"}` body,
// which is what the SDK uses to throw the right named exception. SigV4
// signatures are not checked.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AwsError, internalFailure, invalidRequest, unknownOperation } from '../errors.ts';
import type { FaultInjector } from '../faults.ts';
import type { Logger } from '../log.ts';

export interface ControlRequest {
  method: string;
  path: string;
  /** Decoded `{label}` values of the path template. */
  params: Record<string, string>;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The body as a JSON object ({} when empty); InvalidRequestException when malformed. */
  json(): Record<string, unknown>;
}

export interface Route {
  /** AWS operation name, used for fault injection and logs. */
  operation: string;
  method: 'GET' | 'PUT' | 'POST' | 'DELETE' | 'PATCH';
  /** Path template, e.g. `/certificates/{certificateId}`. */
  path: string;
  /** Sandbox admin routes bypass fault injection. */
  admin?: boolean;
  /** Returns the JSON body, or undefined for an empty 200 (operations with no output). */
  handle(req: ControlRequest): unknown | Promise<unknown>;
}

interface CompiledRoute extends Route {
  pattern: RegExp;
  labels: string[];
}

const MAX_BODY = 1024 * 1024;

export interface ControlServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startControlServer(opts: {
  host: string;
  port: number;
  routes: Route[];
  faults: FaultInjector;
  logger: Logger;
}): Promise<ControlServer> {
  const routes = opts.routes.map(compile);
  const server = createServer((req, res) => {
    void serve(req, res, routes, opts.faults, opts.logger);
  });
  // Keep-alive sockets from SDK clients would otherwise hold close() open.
  server.keepAliveTimeout = 5_000;
  await listen(server, opts.port, opts.host);
  const port = (server.address() as AddressInfo).port;
  const hostForUrl = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${hostForUrl}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function serve(
  req: IncomingMessage,
  res: ServerResponse,
  routes: CompiledRoute[],
  faults: FaultInjector,
  logger: Logger,
): Promise<void> {
  const requestId = randomUUID();
  const started = performance.now();
  let operation = 'Unknown';
  res.once('finish', () =>
    logger.debug?.({ operation, status: res.statusCode, ms: Math.round(performance.now() - started) }, 'sandbox control plane request'),
  );
  try {
    const url = new URL(req.url ?? '/', 'http://sandbox');
    const found = match(routes, req.method ?? 'GET', url.pathname);
    if (!found) {
      throw unknownOperation(`No operation matches ${req.method} ${url.pathname} in the sandbox`);
    }
    const { route, params } = found;
    operation = route.operation;
    const body = await readBody(req);
    let answerDelayMs = 0;
    if (!route.admin) {
      const decision = faults.decide(operation);
      if (decision.delayMs > 0) await new Promise((r) => setTimeout(r, decision.delayMs));
      if (decision.error) throw decision.error;
      answerDelayMs = decision.answerDelayMs ?? 0;
    }
    const result = await route.handle({
      method: req.method ?? 'GET',
      path: url.pathname,
      params,
      query: url.searchParams,
      headers: req.headers,
      body,
      json: () => parseJson(body),
    });
    if (answerDelayMs > 0) await new Promise((r) => setTimeout(r, answerDelayMs));
    send(res, 200, requestId, result);
  } catch (err) {
    const aws = err instanceof AwsError ? err : internalFailure('An unexpected error has occurred');
    if (!(err instanceof AwsError)) logger.error({ err, operation }, 'sandbox control plane: unexpected error');
    res.setHeader('x-amzn-ErrorType', aws.code);
    send(res, aws.status, requestId, { ...aws.fields, message: aws.message });
  }
}

function send(res: ServerResponse, status: number, requestId: string, body: unknown): void {
  if (res.headersSent) return;
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'x-amzn-RequestId': requestId,
  });
  res.end(text);
}

function compile(route: Route): CompiledRoute {
  const labels: string[] = [];
  const source = route.path
    .split('/')
    .map((seg) => {
      const m = /^\{(\w+)\}$/.exec(seg);
      if (!m) return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      labels.push(m[1]!);
      return '([^/]+)';
    })
    .join('/');
  return { ...route, pattern: new RegExp(`^${source}$`), labels };
}

function match(routes: CompiledRoute[], method: string, path: string) {
  for (const route of routes) {
    if (route.method !== method) continue;
    const m = route.pattern.exec(path);
    if (!m) continue;
    const params: Record<string, string> = {};
    try {
      route.labels.forEach((label, i) => (params[label] = decodeURIComponent(m[i + 1]!)));
    } catch {
      throw invalidRequest(`Malformed path ${path}`);
    }
    return { route, params };
  }
  return undefined;
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(invalidRequest(`Request body larger than ${MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parseJson(body: Buffer): Record<string, unknown> {
  if (body.length === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw invalidRequest(`Request body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalidRequest('Request body must be a JSON object');
  return v as Record<string, unknown>;
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
