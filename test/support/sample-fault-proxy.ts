import net from 'node:net';

/**
 * What the proxy does with one client connection:
 * - `pass`: forwards both ways;
 * - `drop-response`: forwards the request, then cuts the client off as soon as the answer starts
 *   coming back, so the server has done the work (and stored its record) but the client sees a
 *   network error;
 * - `reset`: cuts the client off at once, before anything reaches the server;
 * - a status: answers it itself after reading the request, as a gateway in front of an app would.
 */
export type ProxyPlan = 'pass' | 'drop-response' | 'reset' | { status: number; headers?: Record<string, string>; body?: string };

/** A request as it went through the proxy. */
export interface SeenRequest {
  method: string;
  path: string;
  /** Header names in lower case. */
  headers: Record<string, string>;
}

/** An HTTP-aware TCP proxy in front of the sample that injects failures, one plan per connection. */
export interface FaultProxy {
  url: string;
  /** Every request head the proxy saw, in order, whatever its plan. */
  seen: SeenRequest[];
  close(): Promise<void>;
}

/**
 * Starts a proxy to `target`; connection n gets `plans[n]`, connections past the list get `then`
 * (default `pass`). One plan per connection suits fetch: after a failure it opens a new one.
 */
export async function startFaultProxy(target: string, plans: ProxyPlan[], then: ProxyPlan = 'pass'): Promise<FaultProxy> {
  const { hostname, port } = new URL(target);
  const seen: SeenRequest[] = [];
  const sockets = new Set<net.Socket>();
  const queue = [...plans];
  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
  };

  const server = net.createServer((client) => {
    track(client);
    const plan = queue.shift() ?? then;
    if (plan === 'reset') {
      client.resetAndDestroy();
      return;
    }
    const reader = new RequestReader((request) => {
      seen.push(request);
      if (typeof plan === 'object') answer(client, plan);
    });
    if (typeof plan === 'object') {
      client.on('data', (chunk: Buffer) => reader.push(chunk));
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    track(upstream);
    const cut = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', cut);
    upstream.on('close', cut);
    client.on('data', (chunk: Buffer) => {
      reader.push(chunk);
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (plan === 'drop-response') cut();
      else client.write(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: proxyPort } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${proxyPort}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

function answer(client: net.Socket, plan: { status: number; headers?: Record<string, string>; body?: string }): void {
  const body = plan.body ?? JSON.stringify({ error: { type: 'api_error', code: 'injected_by_proxy', message: 'Injected by the test proxy.' } });
  const headers = { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(body)), Connection: 'close', ...plan.headers };
  const head = [`HTTP/1.1 ${plan.status} Injected`, ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`)].join('\r\n');
  client.end(`${head}\r\n\r\n${body}`);
}

/** Splits a request stream into requests (heads with a Content-Length body); reports each once read whole. */
class RequestReader {
  private buffer = Buffer.alloc(0);
  private bodyLeft = 0;
  private current: SeenRequest | undefined;

  constructor(private readonly onRequest: (request: SeenRequest) => void) {}

  push(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      if (this.current) {
        const skipped = Math.min(this.bodyLeft, this.buffer.length);
        this.buffer = this.buffer.subarray(skipped);
        this.bodyLeft -= skipped;
        if (this.bodyLeft > 0) return;
        const request = this.current;
        this.current = undefined;
        this.onRequest(request);
      }
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const [requestLine, ...lines] = this.buffer.subarray(0, end).toString('latin1').split('\r\n');
      this.buffer = this.buffer.subarray(end + 4);
      const [method, path] = requestLine.split(' ');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      this.bodyLeft = Number(headers['content-length'] ?? 0);
      this.current = { method, path, headers };
    }
  }
}
