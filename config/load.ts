import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { configSchema, type Config } from './schema.ts';

/** A configuration that cannot be used; the message names the key path (or line) and the reason. */
export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`${source}: invalid configuration\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** Environment variables that override one key each, applied after the file. */
export const envOverrides: Record<string, string[]> = {
  SIMBRIDGE_DATA_DIR: ['dataDir'],
  SIMBRIDGE_MODE: ['mode'],
  SIMBRIDGE_MQTT_PORT: ['listeners', 'mqtt', 'port'],
  SIMBRIDGE_HTTP_PORT: ['listeners', 'http', 'port'],
  SIMBRIDGE_COAP_PORT: ['listeners', 'coap', 'port'],
  SIMBRIDGE_UDP_PORT: ['listeners', 'udp', 'port'],
  SIMBRIDGE_OBSERVER_PORT: ['sandbox', 'observerPort'],
  SIMBRIDGE_SANDBOX_CONTROL_PORT: ['sandbox', 'controlPort'],
  SIMBRIDGE_SANDBOX_DATA_PORT: ['sandbox', 'dataPort'],
  SIMBRIDGE_LOG_LEVEL: ['log', 'level'],
  SIMBRIDGE_STORAGE_URL: ['storage', 'url'],
  SIMBRIDGE_NODE_ID: ['cluster', 'nodeId'],
};

/**
 * Loads the configuration: the YAML file (none = sandbox defaults) with ${VAR} / ${VAR:-default}
 * interpolation, then SIMBRIDGE_* overrides, then schema validation.
 */
export function loadConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env): Config {
  const source = file ?? '(defaults)';
  let raw: unknown = {};
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(source, [`cannot read file: ${(err as Error).message}`]);
    }
    raw = parseYamlText(interpolate(text, env, source), source) ?? {};
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(source, ['(root): expected a mapping of keys to values']);
  }
  applyEnvOverrides(raw as Record<string, unknown>, env);
  return validate(raw, source);
}

export function validate(raw: unknown, source: string): Config {
  const result = configSchema.safeParse(raw);
  if (result.success) return result.data;
  throw new ConfigError(source, result.error.issues.map((issue) => describeIssue(issue, raw)));
}

function interpolate(text: string, env: NodeJS.ProcessEnv, source: string): string {
  const problems: string[] = [];
  const out = text
    .split('\n')
    .map((line, i) =>
      // Comments may mention ${VARS} as documentation: leave them alone.
      line.trimStart().startsWith('#')
        ? line
        : line.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (_m, name: string, fallback?: string) => {
            const value = env[name] ?? fallback;
            if (value === undefined) problems.push(`line ${i + 1}: environment variable ${name} is not set`);
            return value ?? '';
          }),
    )
    .join('\n');
  if (problems.length) throw new ConfigError(source, problems);
  return out;
}

function parseYamlText(text: string, source: string): unknown {
  try {
    return parseYaml(text);
  } catch (err) {
    if (err instanceof YAMLParseError) {
      const where = err.linePos ? `line ${err.linePos[0].line}` : '(file)';
      throw new ConfigError(source, [`${where}: ${err.message.split('\n')[0]}`]);
    }
    throw err;
  }
}

function applyEnvOverrides(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): void {
  for (const [name, path] of Object.entries(envOverrides)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    let node = raw;
    for (const key of path.slice(0, -1)) {
      if (typeof node[key] !== 'object' || node[key] === null) node[key] = {};
      node = node[key] as Record<string, unknown>;
    }
    // Numbers arrive as text from the environment; a non-number is left as text so validation names it.
    node[path.at(-1)!] = /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : value;
  }
}

function describeIssue(issue: z.core.$ZodIssue, raw: unknown): string {
  const path = issue.path.length ? issue.path.join('.') : '(root)';
  const value = valueAt(raw, issue.path);
  switch (issue.code) {
    case 'invalid_type':
      return value === undefined
        ? `${path}: required (expected ${article(issue.expected)})`
        : `${path}: expected ${article(issue.expected)}, got ${show(value)}`;
    case 'invalid_value':
      return `${path}: expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}, got ${show(value)}`;
    case 'unrecognized_keys':
      return `${path}: unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
    default:
      return `${path}: ${issue.message}${value !== undefined ? ` (got ${show(value)})` : ''}`;
  }
}

function article(expected: string): string {
  return /^[aeiou]/.test(expected) ? `an ${expected}` : `a ${expected}`;
}

function show(value: unknown): string {
  // A connection string's password (storage.url) never reaches a log or a terminal.
  const shown = JSON.stringify(value) ?? String(value);
  return shown.replace(/(\/\/[^/:@\s"]*:)[^@\s/"]*@/g, '$1***@');
}

function valueAt(raw: unknown, path: PropertyKey[]): unknown {
  let node = raw;
  for (const key of path) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<PropertyKey, unknown>)[key];
  }
  return node;
}
