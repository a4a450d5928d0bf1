// Child process of the tls-contexts scenario: builds upstream TLS contexts as the link does and prints
// what each cost. A process of its own, so that the memory measured is the contexts' alone, and so that
// making the bundle the default trust (thread_default) touches nothing else.
// Arguments: per_context | thread_default, the certificate and key files, how many contexts.
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext } from 'node:tls';
import { perContextTrust, threadDefaultTrust, upstreamTrust } from '../../bridge/upstream/trust.ts';

const [mode, certFile, keyFile, count] = process.argv.slice(2);
const gc = (globalThis as { gc?: () => void }).gc!;
const rssKb = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]);

const bundle = upstreamTrust(undefined);
const trust = mode === 'thread_default' ? threadDefaultTrust() : perContextTrust;
const cert = readFileSync(certFile!, 'utf8');
const key = readFileSync(keyFile!, 'utf8');
const context = () => createSecureContext({ cert, key, ca: trust(bundle), minVersion: 'TLSv1.2' });

// The first context builds what all share (the default store); it is not what one more session costs.
context();
gc();
const before = rssKb();
const kept: SecureContext[] = [];
const started = process.hrtime.bigint();
for (let i = 0; i < Number(count); i++) kept.push(context());
const ms = Number(process.hrtime.bigint() - started) / 1e6;
gc();
process.stdout.write(
  JSON.stringify({ node: process.version, kbPerContext: (rssKb() - before) / kept.length, msPerContext: ms / kept.length, sharedStore: trust(bundle) === undefined, roots: bundle.match(/BEGIN CERTIFICATE/g)!.length }),
);
