import { request } from 'node:http';

/** An HTTP request from a given loopback source address; resolves with the status and the parsed JSON body. */
export function httpFrom(
  localAddress: string,
  port: number,
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: Buffer | string } = {},
): Promise<{ status: number; body: any; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, localAddress, headers: opts.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          /* not JSON */
        }
        resolve({ status: res.statusCode ?? 0, body, headers: res.headers });
      });
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/**
 * A gateway's /metrics text without the `node` label that nodes on PostgreSQL add to every series (several
 * nodes scrape into one place), so one pattern holds on either storage.
 */
export async function scrapeMetrics(adminPort: number | undefined): Promise<string> {
  return withoutNodeLabel(await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text());
}

export function withoutNodeLabel(metrics: string): string {
  return metrics.replace(/,node="[^"]*"\}/g, '}').replace(/\{node="[^"]*"\}/g, '');
}
