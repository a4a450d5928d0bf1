// A test HTTPS file server standing in for S3 (or any firmware host): a TLS certificate from the
// sandbox CA, files put in memory by the test, and a count of downloads per file, so a test can hold
// the gateway to "one upstream download". It can serve wrong bytes on purpose (a corrupted file) and
// hold its answers back for a while (so concurrent requests overlap one download).
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';

export interface FileServerOptions {
  /** PEM certificate and key of the server, e.g. the sandbox's serverCertFile / serverKeyFile (SANs localhost, 127.0.0.1). */
  certPem: string;
  keyPem: string;
  host?: string;
  /** 0 = ephemeral (default). */
  port?: number;
}

export interface FileServer {
  port: number;
  /** `https://127.0.0.1:PORT/files/NAME` */
  url(name: string): string;
  put(name: string, body: Buffer): void;
  /** While on, the file's bytes are served with one byte changed (same length). */
  corrupt(name: string, on: boolean): void;
  /** Each answer waits this long before its first byte. */
  setDelay(ms: number): void;
  /** GETs of the file received (answered or still held back). */
  requests(name: string): number;
  /** Completed GETs of the file (200 answers). */
  downloads(name: string): number;
  close(): Promise<void>;
}

export async function startFileServer(opts: FileServerOptions): Promise<FileServer> {
  const files = new Map<string, Buffer>();
  const corrupted = new Set<string>();
  const counts = new Map<string, number>();
  const received = new Map<string, number>();
  let delayMs = 0;

  const server: Server = createServer({ cert: opts.certPem, key: opts.keyPem }, (req, res) => {
    const name = decodeURIComponent((req.url ?? '').replace(/^\/files\//, '').split('?')[0]!);
    const body = files.get(name);
    if (req.method !== 'GET' || !body) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'not_found' }));
      return;
    }
    received.set(name, (received.get(name) ?? 0) + 1);
    setTimeout(() => {
      let bytes = body;
      if (corrupted.has(name)) {
        bytes = Buffer.from(body);
        bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff;
      }
      counts.set(name, (counts.get(name) ?? 0) + 1);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length });
      res.end(bytes);
    }, delayMs);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: (name) => `https://127.0.0.1:${port}/files/${encodeURIComponent(name)}`,
    put: (name, body) => void files.set(name, body),
    corrupt: (name, on) => void (on ? corrupted.add(name) : corrupted.delete(name)),
    setDelay: (ms) => void (delayMs = ms),
    requests: (name) => received.get(name) ?? 0,
    downloads: (name) => counts.get(name) ?? 0,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
