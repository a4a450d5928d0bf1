import { createConnection, createServer, type Socket } from 'node:net';

/**
 * A TCP relay in front of an upstream broker. Tests stop and restart the real broker for an outage and
 * reopen the relay only once their own observer is back, so nothing delivered after the restart goes
 * unseen. TLS passes through untouched. `silence()` plays a peer that stops answering without closing.
 */
export async function startTcpProxy(
  targetPort: number,
): Promise<{ port: number; open: boolean; setOpen(open: boolean): void; silence(): void; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  /** Each connection's socket to the target, and the client socket it answers to. */
  const answers = new Map<Socket, Socket>();
  let open = true;
  let silent = false;
  const server = createServer((inbound) => {
    if (!open) return inbound.destroy();
    const outbound = createConnection({ host: '127.0.0.1', port: targetPort });
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    inbound.pipe(outbound);
    if (!silent) outbound.pipe(inbound);
    answers.set(outbound, inbound);
    outbound.on('close', () => answers.delete(outbound));
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as { port: number }).port,
    get open() {
      return open;
    },
    setOpen(value: boolean) {
      open = value;
      if (!value) for (const s of sockets) s.destroy();
    },
    /** The target goes silent: connections stay up, what it sends no longer reaches the clients. */
    silence() {
      silent = true;
      for (const [outbound, inbound] of answers) outbound.unpipe(inbound);
    },
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
