import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { freePort, tempDir } from './processes.ts';

/**
 * The directory holding Debian's PostgreSQL server programs (package `postgresql`), newest version first.
 * On a developer machine without them the test skips with the reason printed; in CI
 * (SIMBRIDGE_REQUIRE_INTEROP=1) they must be there.
 */
export function findPostgres(): string | undefined {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : [];
  const bin = versions.map((v) => join(root, v, 'bin')).find((dir) => existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl')));
  if (!bin) {
    const reason = `PostgreSQL server programs (initdb, pg_ctl) not found under ${root} (Debian package postgresql)`;
    if (process.env.SIMBRIDGE_REQUIRE_INTEROP === '1') throw new Error(`${reason}, and SIMBRIDGE_REQUIRE_INTEROP=1`);
    console.log(`skipping PostgreSQL test: ${reason}`);
  }
  return bin;
}

// initdb refuses to run as root: as root, the server runs as an unprivileged user that owns its directory.
const SERVER_USER = 'postgres';
const asRoot = process.getuid?.() === 0;

function serverUser(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${SERVER_USER}:`));
  if (!line) throw new Error(`tests run as root, and there is no user ${SERVER_USER} to run PostgreSQL as (initdb refuses root)`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

/** Runs one of the server programs, as the server user when this process is root. */
function run(bin: string, program: string, args: string[]): string {
  const [cmd, argv] = asRoot ? ['runuser', ['-u', SERVER_USER, '--', join(bin, program), ...args]] : [join(bin, program), args];
  try {
    return execFileSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${program} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`);
  }
}

const running = new Set<PostgresServer>();
// A server outlives the test process unless stopped: stop every one still running, however this exits.
process.on('exit', () => {
  for (const server of running) server.stopNow();
});

/**
 * A throw-away PostgreSQL cluster in a temp directory, on a free loopback port, started and stopped with
 * pg_ctl (no system service). Each test takes a database of its own from it (database()).
 */
export class PostgresServer {
  private databases = 0;
  private readonly admin: pg.Pool;

  private constructor(
    readonly bin: string,
    readonly dir: string,
    readonly port: number,
  ) {
    this.admin = new pg.Pool({ connectionString: this.url('postgres'), max: 1 });
    // A server stopped on purpose (stop/start tests) makes its idle admin connection fail: not a test error.
    this.admin.on('error', () => undefined);
  }

  /**
   * initdb and start. `durable: false` (the default) turns fsync off: test databases need no power-loss
   * safety, and the machine's disk is shared. synchronous_commit stays on either way, as in production.
   */
  static async start(bin: string, opts: { durable?: boolean } = {}): Promise<PostgresServer> {
    const dir = tempDir('pg');
    if (asRoot) {
      const { uid, gid } = serverUser();
      chownSync(dir, uid, gid);
    }
    const data = join(dir, 'data');
    run(bin, 'initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
    const server = new PostgresServer(bin, dir, await freePort());
    server.fsync = opts.durable ?? false;
    server.startNow();
    return server;
  }

  private fsync = false;

  /** The connection string of a database on this server. */
  url(database: string): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  /** A new, empty database; resolves with its connection string. */
  async database(): Promise<string> {
    const name = `t${process.pid}_${++this.databases}`;
    await this.admin.query(`CREATE DATABASE ${name}`);
    return this.url(name);
  }

  /** Starts (again) on the same port and directory, and waits until it accepts connections. */
  startNow(): void {
    const options = [
      `-p ${this.port}`,
      `-k ${this.dir}`,
      '-c listen_addresses=127.0.0.1',
      `-c fsync=${this.fsync ? 'on' : 'off'}`,
      '-c synchronous_commit=on',
      '-c max_connections=200',
    ].join(' ');
    run(this.bin, 'pg_ctl', ['start', '-w', '-t', '60', '-D', join(this.dir, 'data'), '-l', join(this.dir, 'server.log'), '-o', options]);
    running.add(this);
  }

  /** Stops the server: `fast` rolls back open transactions; `immediate` is a crash (recovery at next start). */
  stopNow(mode: 'fast' | 'immediate' = 'immediate'): void {
    if (!running.delete(this)) return;
    try {
      run(this.bin, 'pg_ctl', ['stop', '-w', '-m', mode, '-D', join(this.dir, 'data')]);
    } catch {
      // already stopped
    }
  }

  /** The server's log, for a failing test's message. */
  log(): string {
    try {
      return readFileSync(join(this.dir, 'server.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** Stops the server and removes its directory. */
  async close(): Promise<void> {
    await this.admin.end().catch(() => undefined);
    this.stopNow('fast');
    rmSync(this.dir, { recursive: true, force: true });
  }
}
