import { createHash } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';

/** An answer as it came over the wire. */
export interface WireResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The body parsed as JSON (undefined when it is not JSON). */
  json: any;
}

export interface WireRequest {
  method?: string;
  path: string;
  /** Header lines in order; repeat a name to send it twice. */
  headers?: [string, string][];
  /** A string or Buffer is sent as is; anything else as JSON. */
  body?: unknown;
}

/** Longest silence of the app on a request before `send` gives up: below Jest's test timeout. */
const ANSWER_TIMEOUT_MS = 20_000;

/** Sends one request with exactly the given header lines and returns the raw answer. */
export function send(baseUrl: string, req: WireRequest): Promise<WireResponse> {
  const url = new URL(req.path, baseUrl);
  const lines: string[] = ['Host', url.host];
  let body: Buffer | undefined;
  if (req.body !== undefined) {
    const isRaw = typeof req.body === 'string' || Buffer.isBuffer(req.body);
    body = isRaw ? Buffer.from(req.body as string) : Buffer.from(JSON.stringify(req.body));
    if (!req.headers?.some(([name]) => name.toLowerCase() === 'content-type')) {
      lines.push('Content-Type', isRaw ? 'text/plain' : 'application/json');
    }
    lines.push('Content-Length', String(body.length));
  } else if ((req.method ?? 'POST') !== 'GET') {
    // Without it Node's client sends an empty chunked body, which Fastify rejects with 415.
    lines.push('Content-Length', '0');
  }
  for (const [name, value] of req.headers ?? []) lines.push(name, value);
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      { method: req.method ?? 'POST', hostname: url.hostname, port: url.port, path: url.pathname + url.search, headers: lines, agent: false },
      (incoming) => {
        const chunks: Buffer[] = [];
        incoming.on('data', (chunk: Buffer) => chunks.push(chunk));
        incoming.on('error', reject);
        incoming.on('end', () => {
          const bytes = Buffer.concat(chunks);
          let json: unknown;
          try {
            json = JSON.parse(bytes.toString('utf8'));
          } catch {
            json = undefined;
          }
          resolve({ status: incoming.statusCode ?? 0, headers: incoming.headers, body: bytes, json });
        });
      },
    );
    outgoing.on('error', reject);
    // A request the app never answers fails its test (and lets the app close) instead of hanging it.
    outgoing.setTimeout(ANSWER_TIMEOUT_MS, () => outgoing.destroy(new Error(`no answer to ${req.method ?? 'POST'} ${req.path} within ${ANSWER_TIMEOUT_MS} ms`)));
    outgoing.end(body);
  });
}

/** Header lines for a caller with this bearer token and this key. */
export function authed(token: string, key?: string, extra: [string, string][] = []): [string, string][] {
  const lines: [string, string][] = [['Authorization', `Bearer ${token}`]];
  if (key !== undefined) lines.push(['Idempotency-Key', key]);
  return [...lines, ...extra];
}

/** The scope the module stores for a bearer token by default: its SHA-256 hex. */
export function scopeOf(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}
