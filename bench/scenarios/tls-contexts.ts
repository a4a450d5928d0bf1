// What each upstream session's TLS context costs, by how it is given the CA bundle it must chain to:
// a certificate store of its own per context (`ca`), or the bundle made the connection thread's default
// trust, shared by every context (bridge/upstream/trust.ts#threadDefaultTrust, Node 22.19+). The bundle
// is production's: the five Amazon Trust Services roots (the bench's sandbox passes one CA, so no other
// scenario shows this). Knobs: BENCH_CONTEXTS (per run, 1,000; quick 200), BENCH_NODES (Node binaries to
// measure with, comma-separated; default this one).
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import type { ScenarioResult } from '../lib/report.ts';
import { round } from '../lib/stats.ts';
import { CertificateAuthority } from '../../sandbox/ca.ts';
import { generateKeyAndCsr } from '../../vending/keys.ts';

const run = promisify(execFile);
const PROBE = fileURLToPath(new URL('../lib/tls-context-probe.ts', import.meta.url));
const MODES = ['per_context', 'thread_default'] as const;

interface Probe {
  node: string;
  kbPerContext: number;
  msPerContext: number;
  sharedStore: boolean;
  roots: number;
}

async function probe(node: string, mode: string, certFile: string, keyFile: string, count: number): Promise<Probe> {
  const { stdout } = await run(node, ['--expose-gc', '--import', 'tsx', PROBE, mode, certFile, keyFile, String(count)], { cwd: fileURLToPath(new URL('../..', import.meta.url)) });
  return JSON.parse(stdout) as Probe;
}

async function tlsContexts(ctx: Ctx): Promise<ScenarioResult> {
  const count = knob('CONTEXTS', 1000, 200, ctx);
  const nodes = (process.env.BENCH_NODES ?? process.execPath).split(',').filter(Boolean);
  // A session's own certificate and key, as vending makes them.
  const dir = mkdtempSync(join(tmpdir(), 'bench-tls-contexts-'));
  const ca = await CertificateAuthority.open(dir);
  const { privateKeyPem, csrPem } = await generateKeyAndCsr('bench-thing', 'ec-p256');
  const certFile = join(dir, 'thing.pem');
  const keyFile = join(dir, 'thing.key');
  writeFileSync(certFile, (await ca.signCsr(csrPem, 1)).pem);
  writeFileSync(keyFile, privateKeyPem);

  const figures: Record<string, number> = {};
  const rows: string[] = [];
  let roots = 0;
  for (const node of nodes) {
    const best: Record<string, Probe> = {};
    // Twice over, interleaved; the lower of the two (the machine is shared).
    for (let pass = 0; pass < 2; pass++) {
      for (const mode of MODES) {
        const p = await probe(node, mode, certFile, keyFile, count);
        roots = p.roots;
        ctx.log(`  ${p.node} ${mode}, pass ${pass + 1}: ${round(p.kbPerContext)} KB, ${round(p.msPerContext)} ms per context${p.sharedStore ? ' (shared store)' : ''}`);
        const was = best[mode];
        best[mode] = was ? { ...p, kbPerContext: Math.min(was.kbPerContext, p.kbPerContext), msPerContext: Math.min(was.msPerContext, p.msPerContext) } : p;
      }
    }
    const major = best.per_context!.node.split('.')[0]!.replace('v', '');
    for (const mode of MODES) {
      figures[`kb_per_context_${mode}_node${major}`] = best[mode]!.kbPerContext;
      figures[`ms_per_context_${mode}_node${major}`] = best[mode]!.msPerContext;
    }
    figures[`shared_store_node${major}`] = best.thread_default!.sharedStore ? 1 : 0;
    figures[`kb_saved_per_session_node${major}`] = best.per_context!.kbPerContext - best.thread_default!.kbPerContext;
    rows.push(
      `| ${best.per_context!.node} | ${round(best.per_context!.kbPerContext)} | ${round(best.per_context!.msPerContext)} | ${round(best.thread_default!.kbPerContext)} | ${round(best.thread_default!.msPerContext)} | ${best.thread_default!.sharedStore ? 'yes' : 'no (per context)'} |`,
    );
  }
  return {
    params: { contexts_per_run: count, roots_in_bundle: roots, nodes: nodes.length },
    figures: Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, round(v)])),
    intro: [
      `Memory (RSS after a full GC) and CPU per upstream TLS context with a session's certificate and key, over ${count} contexts kept alive, by how the context trusts the ${roots} Amazon Trust Services roots IoT Core chains to: \`ca\` on each context (per_context), or the roots made the connection thread's default trust, shared by every context (thread_default).`,
    ],
    notes: [
      'Each run is a child process of its own; the figures are the lower of two interleaved runs per mode.',
      'thread_default needs tls.setDefaultCACertificates (Node 22.19 and later); on older Nodes the connection threads fall back to per_context, which the `shared_store_node<N>` figure shows as 0.',
      "The bench's other scenarios trust one sandbox CA, so they do not show this production cost.",
    ],
    extraMd: ['| Node | per_context KB | per_context ms | thread_default KB | thread_default ms | store shared |', '|---|---:|---:|---:|---:|---|', ...rows].join('\n') + '\n',
  };
}

export const scenario: Scenario = {
  title: 'upstream TLS contexts: memory and CPU per session, by how the CA bundle is trusted',
  run: tlsContexts,
};
