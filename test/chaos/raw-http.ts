import net from 'node:net';

/** An answer read off the socket; `status` 0 when the connection failed before any answer came. */
export interface RawResponse {
  status: number;
  headers: Record<string, string[]>;
  body: Buffer;
  json: any;
  /** Bytes the server sent past the Content-Length it declared: a desynchronised connection. */
  excess: Buffer;
  /** The socket error, if any (e.g. a reset after the server refused a body it would not read). */
  error?: string;
}

export interface RawRequest {
  method?: string;
  path: string;
  /** Header lines exactly as sent: the value's bytes go on the wire untouched (a string is sent as latin1). */
  headers: [string, string | Buffer][];
  body?: Buffer;
  /** Add `Content-Length` for the body (default true). */
  contentLength?: boolean;
}

/**
 * Sends one HTTP/1.1 request byte for byte over a fresh socket (Node's own client refuses header
 * values it considers invalid, which is what these tests need to send) and reads the answer until
 * the server closes the connection (`Connection: close`).
 */
export function rawRequest(baseUrl: string, req: RawRequest): Promise<RawResponse> {
  const url = new URL(baseUrl);
  const body = req.body ?? Buffer.alloc(0);
  const head = requestHead(url, req, 'close');

  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let error: string | undefined;
    let answered = false;
    const socket = net.connect(Number(url.port), url.hostname);
    socket.setTimeout(15_000, () => socket.destroy(new Error('client timeout')));
    socket.on('data', (chunk: Buffer) => {
      answered = true;
      chunks.push(chunk);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
    socket.on('close', () => resolve(parseResponse(Buffer.concat(chunks), error)));
    socket.on('connect', async () => {
      socket.write(head);
      // Stop sending a large body as soon as the server has answered (e.g. 413 before reading it).
      for (let offset = 0; offset < body.length && !answered && !socket.destroyed; offset += 65536) {
        if (!socket.write(body.subarray(offset, offset + 65536))) {
          await new Promise<void>((resume) => {
            const go = () => {
              socket.off('drain', go);
              socket.off('close', go);
              resume();
            };
            socket.once('drain', go);
            socket.once('close', go);
          });
        }
      }
    });
  });
}

/**
 * Sends `requests` back to back on one keep-alive connection (HTTP/1.1 pipelining; the last one asks
 * to close it) and reads their answers in order until the connection closes. `abortAfterMs` destroys
 * the connection that long after sending. An answer that did not come in full is undefined.
 */
export function pipelined(
  baseUrl: string,
  requests: RawRequest[],
  abortAfterMs?: number,
): Promise<(RawResponse | undefined)[]> {
  const url = new URL(baseUrl);
  const bytes = requests.flatMap((req, i) => {
    const connection = i === requests.length - 1 ? 'close' : 'keep-alive';
    return [requestHead(url, req, connection), req.body ?? Buffer.alloc(0)];
  });
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(Number(url.port), url.hostname);
    socket.setTimeout(15_000, () => socket.destroy());
    const abort = abortAfterMs === undefined ? undefined : setTimeout(() => socket.destroy(), abortAfterMs);
    socket.on('connect', () => socket.write(Buffer.concat(bytes)));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(abort);
      const responses = splitResponses(Buffer.concat(chunks));
      resolve(requests.map((_, i) => responses[i]));
    });
  });
}

/** The request line and headers of `req` (its bytes as given), with `Connection: <connection>`. */
function requestHead(url: URL, req: RawRequest, connection: 'close' | 'keep-alive'): Buffer {
  const body = req.body ?? Buffer.alloc(0);
  const start = `${req.method ?? 'POST'} ${req.path} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: ${connection}\r\n`;
  const lines: Buffer[] = [Buffer.from(start, 'latin1')];
  for (const [name, value] of req.headers) {
    const bytes = Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1');
    lines.push(Buffer.concat([Buffer.from(`${name}: `, 'latin1'), bytes, Buffer.from('\r\n')]));
  }
  if (req.contentLength ?? true) lines.push(Buffer.from(`Content-Length: ${body.length}\r\n`));
  lines.push(Buffer.from('\r\n'));
  return Buffer.concat(lines);
}

/** The complete answers at the start of a pipeline's bytes, in order; reading stops at one that broke off. */
function splitResponses(bytes: Buffer): RawResponse[] {
  const responses: RawResponse[] = [];
  for (let offset = 0; ; ) {
    const end = bytes.indexOf('\r\n\r\n', offset);
    if (end < 0) return responses;
    // Every answer of the chaos app says how long it is.
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(bytes.subarray(offset, end).toString('latin1'))?.[1];
    const next = end + 4 + Number(length);
    if (length === undefined || next > bytes.length) return responses;
    responses.push(parseResponse(bytes.subarray(offset, next), undefined));
    offset = next;
  }
}

function parseResponse(bytes: Buffer, error: string | undefined): RawResponse {
  const end = bytes.indexOf('\r\n\r\n');
  if (end < 0) return { status: 0, headers: {}, body: Buffer.alloc(0), json: undefined, excess: Buffer.alloc(0), error: error ?? 'no answer' };
  const [statusLine, ...headerLines] = bytes.subarray(0, end).toString('latin1').split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
  const headers: Record<string, string[]> = {};
  for (const line of headerLines) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    (headers[name] ??= []).push(line.slice(colon + 1).trim());
  }
  let body = bytes.subarray(end + 4);
  let excess: Buffer = Buffer.alloc(0);
  if (headers['transfer-encoding']?.some((value) => /chunked/i.test(value))) body = dechunk(body);
  else if (headers['content-length']) {
    excess = body.subarray(Number(headers['content-length'][0]));
    body = body.subarray(0, Number(headers['content-length'][0]));
  }
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    json = undefined;
  }
  return { status, headers, body, json, excess, error };
}

function dechunk(bytes: Buffer): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  for (;;) {
    const lineEnd = bytes.indexOf('\r\n', offset);
    if (lineEnd < 0) break;
    const size = parseInt(bytes.subarray(offset, lineEnd).toString('latin1'), 16);
    if (!Number.isFinite(size) || size === 0) break;
    parts.push(bytes.subarray(lineEnd + 2, lineEnd + 2 + size));
    offset = lineEnd + 2 + size + 2;
  }
  return Buffer.concat(parts);
}
