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
  const lines: Buffer[] = [Buffer.from(`${req.method ?? 'POST'} ${req.path} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n`, 'latin1')];
  for (const [name, value] of req.headers) {
    lines.push(Buffer.concat([Buffer.from(`${name}: `, 'latin1'), Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1'), Buffer.from('\r\n')]));
  }
  if (req.contentLength ?? true) lines.push(Buffer.from(`Content-Length: ${body.length}\r\n`));
  lines.push(Buffer.from('\r\n'));
  const head = Buffer.concat(lines);

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
