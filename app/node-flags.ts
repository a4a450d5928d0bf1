/**
 * Node options the gateway runs with: the Dockerfile, deploy/simbridge.service and `npm start` pass them
 * (test/node-flags.units.test.ts keeps those in step), and the bench starts the gateway with them, so
 * that it measures the gateway as deployed.
 *
 * --max-semi-space-size=64: V8's young generation may grow to 64 MB per semi-space (16 by default).
 * The main thread allocates some 25 KB of short-lived objects per message; with the default, the
 * objects of messages still in flight (waiting for their commit or PUBACK) survived the frequent
 * scavenges and were promoted, and collecting them kept four GC threads busy. Measured at saturation
 * (bench/results/changes.md): 20 % less CPU per message, for up to ~130 MB more resident memory once
 * a burst has grown the young generation (it is not per device).
 */
export const GATEWAY_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=64'];
