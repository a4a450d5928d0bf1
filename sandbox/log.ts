// The sandbox logs through whatever pino-compatible logger it is given, or not at all.
export interface Logger {
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
  debug?(obj: object | string, msg?: string): void;
}

const noop = () => {};
export const silentLogger: Logger = { info: noop, warn: noop, error: noop, debug: noop };

