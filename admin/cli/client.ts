import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Readable } from 'node:stream';
import type { Config } from '../../config/schema.ts';
import { CommandError, EXIT, exitCodeForStatus } from './exit-codes.ts';
import { parse, runCommand } from './run.ts';

export interface ClientFlags {
  url?: string;
  token?: string;
  config?: string;
}

/** Options every API-backed command accepts (node:util parseArgs form). */
export const clientOptions = {
  url: { type: 'string' },
  token: { type: 'string' },
  config: { type: 'string', short: 'c' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export const clientHelp = `connection:
  --url URL        admin API base URL (default: SIMBRIDGE_ADMIN_URL, else admin.host/port of the config)
  --token TOKEN    bearer token (default: SIMBRIDGE_ADMIN_TOKEN)
  --config FILE    configuration to read admin.host/port from (default: SIMBRIDGE_CONFIG)
  --json           machine-readable output

exit codes: 0 ok, 1 failure, 2 not found, 64 usage, 77 not authorised`;

/** The admin API as the operator commands use it; any non-2xx answer becomes a CommandError. */
export class AdminClient {
  constructor(
    readonly baseUrl: string,
    private readonly token: string,
  ) {}

  static from(flags: ClientFlags, loadConfig: (file?: string) => Config, env: NodeJS.ProcessEnv = process.env): AdminClient {
    const token = flags.token ?? env.SIMBRIDGE_ADMIN_TOKEN;
    if (!token) throw new CommandError('no admin token: give --token or set SIMBRIDGE_ADMIN_TOKEN (create one with `simbridge tokens create --role operator`)', EXIT.auth);
    return new AdminClient((flags.url ?? env.SIMBRIDGE_ADMIN_URL ?? urlFromConfig(loadConfig(flags.config))).replace(/\/+$/, ''), token);
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return this.send<T>(method, path, payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}, payload);
  }

  /** Streams a body (an import file) without reading it into memory. */
  async stream<T>(method: string, path: string, body: Readable, contentType: string, length?: number): Promise<T> {
    return this.send<T>(method, path, { 'content-type': contentType, ...(length !== undefined ? { 'content-length': String(length) } : {}) }, body);
  }

  private send<T>(method: string, path: string, headers: Record<string, string>, body?: Buffer | Readable): Promise<T> {
    const url = new URL(this.baseUrl + path);
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise<T>((resolve, reject) => {
      const req = request(url, { method, headers: { ...headers, authorization: `Bearer ${this.token}`, accept: 'application/json' } }, (res) => {
        readJson(res).then((data) => {
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) return resolve(data as T);
          const err = data as { error?: string; message?: string } | undefined;
          reject(new ApiError(status, err?.error ?? `http_${status}`, err?.message ?? `HTTP ${status}`, data));
        }, reject);
      });
      req.on('error', (err) => reject(new CommandError(`cannot reach the admin API at ${this.baseUrl}: ${err.message}`, EXIT.failure)));
      if (body === undefined || Buffer.isBuffer(body)) req.end(body);
      else {
        body.on('error', (err) => req.destroy(err));
        body.pipe(req);
      }
    });
  }
}

/** An answer other than 2xx; its exit code follows the status (401/403/429 → 77, 404 → 2). */
export class ApiError extends CommandError {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
    readonly body: unknown,
  ) {
    super(message, exitCodeForStatus(status));
  }
}

function urlFromConfig(config: Config): string {
  const { host, port } = config.admin;
  if (port === 0) throw new CommandError('admin.port is 0 in the configuration (chosen at start): give --url', EXIT.usage);
  // A wildcard bind address is reached on loopback from the same machine.
  const target = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${target.includes(':') ? `[${target}]` : target}:${port}`;
}

async function readJson(res: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return { message: text.slice(0, 200) };
  }
}

/**
 * A command that shows one admin route and takes no arguments (`stats`, `cluster`): its JSON with
 * --json, else what `render` makes of it.
 */
export function runViewCommand<T>(
  args: string[],
  loadConfig: (file?: string) => Config,
  view: { name: string; help: string; route: string; render(value: T): string },
): Promise<number> {
  return runCommand(async () => {
    const { values, positionals } = parse(args, clientOptions, view.help);
    if (values.help) {
      console.log(view.help);
      return EXIT.ok;
    }
    if (positionals.length) throw new CommandError(`${view.name} takes no arguments\n\n${view.help}`, EXIT.usage);
    const value = await AdminClient.from(values, loadConfig).json<T>('GET', view.route);
    console.log(values.json ? JSON.stringify(value, null, 2) : view.render(value));
    return EXIT.ok;
  });
}
