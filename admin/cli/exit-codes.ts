/** Exit codes of every `simbridge` command, for scripts (sysexits.h where one fits). */
export const EXIT = {
  ok: 0,
  failure: 1,
  notFound: 2,
  usage: 64,
  /** EX_UNAVAILABLE: a service the command needs (the PostgreSQL server of storage.url) cannot be reached. */
  unavailable: 69,
  /** EX_NOPERM: no token, a wrong one, too low a role, or sign-ins throttled. */
  auth: 77,
  /** EX_CONFIG: the configuration file does not validate. */
  config: 78,
} as const;

/** A command ending with a message and an exit code. */
export class CommandError extends Error {
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message);
  }
}

export function exitCodeForStatus(status: number): number {
  if (status === 401 || status === 403 || status === 429) return EXIT.auth;
  if (status === 404) return EXIT.notFound;
  return EXIT.failure;
}
