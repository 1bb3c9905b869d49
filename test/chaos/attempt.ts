import { type Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http';

/** One HTTP attempt as the load generator saw it. */
export type AttemptResult =
  | { kind: 'response'; status: number; headers: IncomingHttpHeaders; body: Buffer; sentAt: number; doneAt: number }
  | { kind: 'network'; error: string; aborted: boolean; sentAt: number; doneAt: number };

export interface AttemptRequest {
  url: string;
  path: string;
  headers: Record<string, string>;
  body: string;
  /** Destroy the socket this many ms after sending: a client that gives up mid-request. */
  abortAfterMs?: number;
  /** Give up (and destroy the socket) after this long. */
  timeoutMs?: number;
  /** Send on this agent's connections (keep-alive) instead of a fresh one. */
  agent?: Agent;
}

/** Sends one POST and reports what came back, or how it failed; never throws. */
export function attempt(req: AttemptRequest): Promise<AttemptResult> {
  const sentAt = Date.now();
  return new Promise((resolve) => {
    let settled = false;
    let aborted = false;
    const settle = (result: AttemptResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(abortTimer);
      clearTimeout(timeoutTimer);
      resolve(result);
    };
    const url = new URL(req.path, req.url);
    const body = Buffer.from(req.body);
    const outgoing = httpRequest(
      {
        method: 'POST',
        hostname: url.hostname,
        port: url.port,
        path: url.pathname,
        agent: req.agent ?? false,
        headers: { ...req.headers, 'content-type': 'application/json', 'content-length': String(body.length) },
      },
      (incoming) => {
        const chunks: Buffer[] = [];
        incoming.on('data', (chunk: Buffer) => chunks.push(chunk));
        incoming.on('error', (error) => settle({ kind: 'network', error: error.message, aborted, sentAt, doneAt: Date.now() }));
        incoming.on('aborted', () => settle({ kind: 'network', error: 'response aborted', aborted, sentAt, doneAt: Date.now() }));
        incoming.on('end', () =>
          settle({ kind: 'response', status: incoming.statusCode ?? 0, headers: incoming.headers, body: Buffer.concat(chunks), sentAt, doneAt: Date.now() }),
        );
      },
    );
    outgoing.on('error', (error: NodeJS.ErrnoException) =>
      settle({ kind: 'network', error: aborted ? 'aborted by client' : (error.code ?? error.message), aborted, sentAt, doneAt: Date.now() }),
    );
    const abortTimer =
      req.abortAfterMs === undefined
        ? undefined
        : setTimeout(() => {
            aborted = true;
            outgoing.destroy();
            settle({ kind: 'network', error: 'aborted by client', aborted: true, sentAt, doneAt: Date.now() });
          }, req.abortAfterMs);
    const timeoutTimer = setTimeout(() => {
      outgoing.destroy();
      settle({ kind: 'network', error: 'client timeout', aborted: false, sentAt, doneAt: Date.now() });
    }, req.timeoutMs ?? 15_000);
    outgoing.end(body);
  });
}
