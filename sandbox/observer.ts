// The observer: a plain MQTT tap on 127.0.0.1 where tests watch, byte for byte,
// every message the data plane accepted. It is read-only: a PUBLISH (or a
// will, which would be a publish later) from an observer client is refused and
// its connection closed, and nothing flows from here to the data plane.
//
// MQTT rule [MQTT-4.7.2-1]: `#` does not match topics starting with `$`, so
// subscribe to `$aws/#` as well to see reserved topics (shadows, jobs).
// Basic Ingest messages (`$aws/rules/{rule}/...`) go to a rule on IoT Core,
// where nothing can subscribe to them; the observer is where a test sees them:
// subscribe to `$aws/rules/#`.
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { Aedes, type AuthenticateError } from 'aedes';
import type { Logger } from './log.ts';

export interface Observer {
  port: number;
  /** Re-publishes an accepted data-plane message to observers (never retained). */
  publish(msg: { topic: string; payload: Buffer; qos: 0 | 1 }): void;
  close(): Promise<void>;
}

export async function startObserver(opts: { port: number; logger: Logger }): Promise<Observer> {
  const { logger } = opts;
  const broker = new Aedes({
    authenticate(client, _u, _p, done) {
      if ((client as unknown as { _will?: unknown })._will) {
        const err = new Error('the observer is read-only: no will messages') as AuthenticateError;
        err.returnCode = 5;
        return done(err, null);
      }
      done(null, true);
    },
    authorizePublish(client, _packet, done) {
      if (client) {
        logger.info({ clientId: client.id }, 'sandbox observer: refused a publish (read-only)');
        return done(new Error('the observer is read-only'));
      }
      done(null);
    },
    authorizeSubscribe(_client, sub, done) {
      done(null, { ...sub, qos: sub.qos > 1 ? 1 : sub.qos });
    },
  });
  await broker.listen();

  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    broker.handle(socket);
  });
  // Always loopback: the observer has no authentication at all.
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });

  return {
    port: (server.address() as AddressInfo).port,
    publish(msg) {
      broker.publish({ cmd: 'publish', topic: msg.topic, payload: msg.payload, qos: msg.qos, retain: false, dup: false }, (err) => {
        if (err) logger.warn({ err: err.message, topic: msg.topic }, 'sandbox observer: forward failed');
      });
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
