// The subset of the IoT Core policy language the sandbox enforces. Anything
// outside the subset is refused when the policy is created (MalformedPolicy),
// never silently ignored, so a policy that works here means the same on AWS.
//
// Supported: Effect Allow/Deny (an explicit Deny wins), Action and Resource as
// string or list with `*` / `?` wildcards (actions case-insensitive), policy
// variables `${name}` resolved from the request context (a resource whose
// variable is unknown matches nothing, as on AWS), IAM escapes `${*}` `${?}`
// `${$}`, and Condition operators StringEquals, StringNotEquals, StringLike,
// StringNotLike, Bool (each optionally ...IfExists).
//
// MQTT wildcards `+` and `#` inside policy resources are literal characters,
// as in IoT Core: `topicfilter/a/#` only matches the filter `a/#` itself.

export type Effect = 'Allow' | 'Deny';

export interface Statement {
  effect: Effect;
  actions: string[];
  resources: string[];
  conditions: Condition[];
}

interface Condition {
  operator: string;
  ifExists: boolean;
  key: string;
  values: string[];
}

export interface ParsedPolicy {
  statements: Statement[];
}

/** Context keys / policy variables of one request, e.g. `iot:ClientId`. Undefined = not available. */
export type PolicyContext = Readonly<Record<string, string | undefined>>;

export class PolicyError extends Error {}

const OPERATORS = new Set(['StringEquals', 'StringNotEquals', 'StringLike', 'StringNotLike', 'Bool']);
const VERSIONS = new Set(['2012-10-17', '2008-10-17']);

/** Parses and validates a policy document; throws PolicyError with a reason. */
export function parsePolicy(text: string): ParsedPolicy {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new PolicyError(`policy document is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(doc)) throw new PolicyError('policy document must be a JSON object');
  if (doc.Version !== undefined && !VERSIONS.has(String(doc.Version))) {
    throw new PolicyError(`unsupported policy Version ${JSON.stringify(doc.Version)}`);
  }
  const raw = Array.isArray(doc.Statement) ? doc.Statement : doc.Statement === undefined ? [] : [doc.Statement];
  if (raw.length === 0) throw new PolicyError('policy document has no Statement');
  return { statements: raw.map((s, i) => parseStatement(s, i)) };
}

function parseStatement(s: unknown, i: number): Statement {
  const where = `Statement[${i}]`;
  if (!isObject(s)) throw new PolicyError(`${where} must be an object`);
  for (const unsupported of ['NotAction', 'NotResource', 'Principal', 'NotPrincipal']) {
    if (unsupported in s) throw new PolicyError(`${where}: ${unsupported} is not supported by the sandbox`);
  }
  if (s.Effect !== 'Allow' && s.Effect !== 'Deny') throw new PolicyError(`${where}: Effect must be Allow or Deny`);
  const conditions: Condition[] = [];
  if (s.Condition !== undefined) {
    if (!isObject(s.Condition)) throw new PolicyError(`${where}: Condition must be an object`);
    for (const [op, block] of Object.entries(s.Condition)) {
      const ifExists = op.endsWith('IfExists');
      const operator = ifExists ? op.slice(0, -'IfExists'.length) : op;
      if (!OPERATORS.has(operator)) throw new PolicyError(`${where}: condition operator ${op} is not supported by the sandbox`);
      if (!isObject(block)) throw new PolicyError(`${where}: Condition.${op} must be an object`);
      for (const [key, value] of Object.entries(block)) {
        const values = (Array.isArray(value) ? value : [value]).map((v) => {
          if (typeof v !== 'string' && typeof v !== 'boolean' && typeof v !== 'number') {
            throw new PolicyError(`${where}: Condition.${op}.${key} values must be strings`);
          }
          return String(v);
        });
        conditions.push({ operator, ifExists, key, values });
      }
    }
  }
  return {
    effect: s.Effect,
    actions: stringList(s.Action, `${where}.Action`),
    resources: stringList(s.Resource, `${where}.Resource`),
    conditions,
  };
}

function stringList(v: unknown, where: string): string[] {
  const list = Array.isArray(v) ? v : v === undefined ? [] : [v];
  if (list.length === 0) throw new PolicyError(`${where} is required`);
  for (const item of list) if (typeof item !== 'string' || !item) throw new PolicyError(`${where} must be non-empty strings`);
  return list as string[];
}

/** True when some statement allows (action, resource) in ctx and none denies it. */
export function isAllowed(policies: readonly ParsedPolicy[], action: string, resource: string, ctx: PolicyContext): boolean {
  let allowed = false;
  for (const p of policies) {
    for (const s of p.statements) {
      if (!applies(s, action, resource, ctx)) continue;
      if (s.effect === 'Deny') return false;
      allowed = true;
    }
  }
  return allowed;
}

function applies(s: Statement, action: string, resource: string, ctx: PolicyContext): boolean {
  return (
    s.actions.some((a) => patternToRegExp(a, ctx, 'i')?.test(action)) &&
    s.resources.some((r) => patternToRegExp(r, ctx, '')?.test(resource)) &&
    s.conditions.every((c) => conditionHolds(c, ctx))
  );
}

function conditionHolds(c: Condition, ctx: PolicyContext): boolean {
  const actual = ctx[c.key];
  if (actual === undefined) return c.ifExists;
  switch (c.operator) {
    case 'StringEquals':
      return c.values.some((v) => substitute(v, ctx) === actual);
    case 'StringNotEquals':
      return c.values.every((v) => substitute(v, ctx) !== actual);
    case 'StringLike':
      return c.values.some((v) => patternToRegExp(v, ctx, '')?.test(actual) ?? false);
    case 'StringNotLike':
      return c.values.every((v) => !(patternToRegExp(v, ctx, '')?.test(actual) ?? false));
    case 'Bool':
      return c.values.some((v) => v.toLowerCase() === actual.toLowerCase());
    default:
      return false;
  }
}

// `${name}` in a policy string: a policy variable, or one of the IAM escapes.
const VARIABLE = /\$\{([^}]*)\}/g;
const ESCAPES: Record<string, string> = { '*': '*', '?': '?', $: '$' };

function substitute(value: string, ctx: PolicyContext): string | undefined {
  let missing = false;
  const out = value.replace(VARIABLE, (_m, name: string) => {
    const v = ESCAPES[name] ?? ctx[name];
    if (v === undefined) missing = true;
    return v ?? '';
  });
  return missing ? undefined : out;
}

/**
 * Compiles a policy pattern: `*` and `?` are wildcards, substituted variables
 * and escapes are literal. Undefined when a variable cannot be resolved.
 */
function patternToRegExp(pattern: string, ctx: PolicyContext, flags: string): RegExp | undefined {
  let re = '';
  let last = 0;
  for (const m of pattern.matchAll(VARIABLE)) {
    re += globToRegExp(pattern.slice(last, m.index));
    const v = ESCAPES[m[1]!] ?? ctx[m[1]!];
    if (v === undefined) return undefined;
    re += escapeRegExp(v);
    last = m.index + m[0].length;
  }
  re += globToRegExp(pattern.slice(last));
  return compile(`^${re}$`, flags + 's');
}

// Every publish is checked against every statement: keep compiled patterns.
const compiled = new Map<string, RegExp>();
function compile(source: string, flags: string): RegExp {
  const key = flags + '\0' + source;
  let re = compiled.get(key);
  if (!re) {
    if (compiled.size >= 10_000) compiled.clear();
    compiled.set(key, (re = new RegExp(source, flags)));
  }
  return re;
}

function globToRegExp(glob: string): string {
  return glob
    .split('')
    .map((ch) => (ch === '*' ? '.*' : ch === '?' ? '.' : escapeRegExp(ch)))
    .join('');
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
