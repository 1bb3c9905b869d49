import { ServerResponse, type OutgoingHttpHeaders } from 'node:http';

/** A response as the application finished writing it, before any byte left the process. */
export interface CapturedResponse {
  status: number;
  headers: OutgoingHttpHeaders;
  /** The full body, or `null` when it grew past `streamPast` and was streamed out. */
  body: Buffer | null;
}

/** A complete response to send in place of what the application wrote. */
export interface ReplacementResponse {
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer;
}

/** Which headers already set on the response survive a replacement (e.g. a request id set by middleware). */
export type KeepHeader = (name: string) => boolean;

/** What `onEnd` may answer instead of the captured response. */
export interface Replacement {
  response: ReplacementResponse;
  keepHeader: KeepHeader;
}

/** How far the application has got in writing a captured response. */
export interface CaptureProgress {
  /** Body bytes came through `write()`: the response is being sent (e.g. a stream is piped into it). */
  readonly bodyStarted: boolean;
}

type WriteCallback = (error?: Error | null) => void;

/** The methods through which everything is written to a response. */
interface WriteMethods {
  writeHead: ServerResponse['writeHead'];
  write: ServerResponse['write'];
  end: ServerResponse['end'];
}

const WRITE_METHODS = ['writeHead', 'write', 'end'] as const;

/**
 * Holds back everything written to `response` (status, headers, body) until `onEnd` has settled,
 * then sends it, or the replacement `onEnd` returns. Patching the Node response object puts the
 * capture below Nest's serialisation, exception filters and the platform (Express or Fastify), so
 * what is stored is what goes out.
 *
 * A body past `streamPast` bytes stops being held: what was held is flushed, the rest streams
 * through, and `onEnd` receives `body: null` (it can no longer replace the response); the end of
 * the response still waits for `onEnd`. Without `streamPast` the whole body is held.
 *
 * After a write(), `headersSent` reads true, as Node's does; so an app whose body then fails
 * destroys the response rather than ending it, and a response destroyed before its end never
 * reaches `onEnd` (its owner learns of it from the response's 'close'). What is sent declares the
 * length of what was written, whatever length the app declared.
 */
export function captureResponse(
  response: ServerResponse,
  streamPast: number | undefined,
  onEnd: (captured: CapturedResponse) => Promise<Replacement | void>,
): CaptureProgress {
  const maxBytes = streamPast ?? Infinity;
  const progress = { bodyStarted: false };
  const chunks: Buffer[] = [];
  let size = 0;
  let streaming = false;
  let ended = false;
  let wrote = false;

  const startStreaming = () => {
    streaming = true;
    const held = Buffer.concat(chunks);
    chunks.length = 0;
    (original.write as (chunk: Buffer) => boolean).call(response, held);
  };

  const original = replaceMethods(response, {
    writeHead: captureWriteHead as ServerResponse['writeHead'],
    write: captureWrite as ServerResponse['write'],
    end: captureEnd as ServerResponse['end'],
  });

  function captureWriteHead(...args: any[]) {
    if (streaming) return (original.writeHead as any).apply(response, args);
    recordHead(response, args);
    return response;
  }

  function captureWrite(chunk: any, encoding?: any, callback?: any) {
    if (ended) return false;
    progress.bodyStarted = true;
    if (streaming) return original.write.call(response, chunk, encoding, callback);
    if (!wrote) {
      // As Node's write() does: a file stream that then fails is aborted by Nest and Fastify,
      // which would otherwise append an error answer to the bytes already written.
      wrote = true;
      Object.defineProperty(response, 'headersSent', { value: true, configurable: true });
    }
    const buffer = toBuffer(chunk, encoding);
    chunks.push(buffer);
    size += buffer.length;
    if (size > maxBytes) startStreaming();
    settle(typeof encoding === 'function' ? encoding : callback);
    return true;
  }

  function captureEnd(chunk?: any, encoding?: any, callback?: any) {
    if (ended) return response;
    ended = true;
    if (wrote) delete (response as { headersSent?: boolean }).headersSent;
    if (typeof chunk === 'function') [chunk, callback] = [undefined, chunk];
    if (typeof encoding === 'function') [encoding, callback] = [undefined, encoding];
    let tail: Buffer | undefined;
    if (chunk !== undefined && chunk !== null) {
      const buffer = toBuffer(chunk, encoding);
      if (streaming) tail = buffer;
      else {
        chunks.push(buffer);
        size += buffer.length;
      }
    }
    if (!streaming && size > maxBytes) startStreaming();
    // One chunk (res.send, res.json) is the body as it is: no copy.
    const body = streaming ? null : chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
    // What was written decides, not what was declared (e.g. by res.send() after a write()).
    const declared = response.getHeader('content-length');
    if (body !== null && declared !== undefined && Number(declared) !== size) response.setHeader('content-length', size);
    const captured: CapturedResponse = { status: response.statusCode, headers: response.getHeaders(), body };
    // Whatever onEnd does (it must not throw), the client gets an answer afterwards.
    void onEnd(captured)
      .catch(() => undefined)
      .then((replacement) => {
        restoreMethods(response, original);
        if (replacement && !streaming) sendInstead(response, replacement.response, replacement.keepHeader, {}, callback);
        else response.end(body ?? tail, callback);
      });
    return response;
  }

  return progress;
}

/**
 * Makes `response` send `stored` instead of whatever the application writes: the headers already
 * set are dropped but those `keepHeader` names (e.g. a request id set by middleware for this
 * request), and `extraHeaders` are added.
 */
export function replayResponse(
  response: ServerResponse,
  stored: ReplacementResponse,
  keepHeader: KeepHeader,
  extraHeaders: Record<string, string>,
): void {
  const original = replaceMethods(response, {
    // What writeHead() sets stays on the response, so the kept headers include it: Fastify passes
    // those a hook set with reply.header() this way.
    writeHead: ((...args: any[]) => {
      recordHead(response, args);
      return response;
    }) as ServerResponse['writeHead'],
    write: ((_chunk: unknown, encoding?: unknown, callback?: unknown) => {
      settle((typeof encoding === 'function' ? encoding : callback) as WriteCallback | undefined);
      return true;
    }) as ServerResponse['write'],
    end: ((...args: unknown[]) => {
      restoreMethods(response, original);
      const callback = args.find((arg) => typeof arg === 'function') as WriteCallback | undefined;
      sendInstead(response, stored, keepHeader, extraHeaders, callback);
      return response;
    }) as ServerResponse['end'],
  });
}

/** Replaces the status, headers (but those `keepHeader` names) and body of a response not yet sent, and sends it. */
function sendInstead(
  response: ServerResponse,
  replacement: ReplacementResponse,
  keepHeader: KeepHeader,
  extraHeaders: Record<string, string>,
  callback: WriteCallback | undefined,
): void {
  for (const name of response.getHeaderNames()) if (!keepHeader(name)) response.removeHeader(name);
  for (const [name, value] of Object.entries(replacement.headers)) response.setHeader(name, value);
  for (const [name, value] of Object.entries(extraHeaders)) response.setHeader(name, value);
  // Whatever declared a length (a kept header, a record stored before lengths were checked), the body's is sent.
  if (response.hasHeader('content-length')) response.setHeader('content-length', replacement.body.length);
  response.statusCode = replacement.status;
  response.end(replacement.body, callback);
}

// The stand-in methods of each response being captured or replayed through forwarders on its
// prototype, and for each prototype given forwarders, those and the methods they forward to otherwise.
const standIns = new WeakMap<ServerResponse, WriteMethods>();
const forwarding = new WeakMap<object, { forwarders: WriteMethods; forwarded: WriteMethods }>();

/**
 * Makes `methods` answer `writeHead`, `write` and `end` of `response`, and returns the methods
 * they replace (the response's own ones first: what other middleware, e.g. compression, put there
 * stays below the capture). Express gives each response a prototype of its app's, and changing
 * such a response's shape (own properties, another prototype) costs microseconds; so that
 * prototype gets forwarders once, which call the stand-ins registered for the response, or the
 * methods they replaced when it has none. Other responses get `methods` as their own.
 */
function replaceMethods(response: ServerResponse, methods: WriteMethods): WriteMethods {
  if (!WRITE_METHODS.some((name) => Object.hasOwn(response, name))) {
    const prototype = Object.getPrototypeOf(response);
    const forwarded = forwardedBy(prototype) ?? (canForward(prototype) ? addForwarders(prototype) : undefined);
    if (forwarded) {
      standIns.set(response, methods);
      return forwarded;
    }
  }
  const original: WriteMethods = { writeHead: response.writeHead, write: response.write, end: response.end };
  setOwnMethods(response, methods);
  return original;
}

/** Gives `response` its `original` methods back. */
function restoreMethods(response: ServerResponse, original: WriteMethods): void {
  if (!standIns.delete(response)) setOwnMethods(response, original);
}

function setOwnMethods(response: ServerResponse, methods: WriteMethods): void {
  // Assigned, which costs a tenth of defining them, unless an inherited method is read-only
  // (assigning then throws).
  try {
    Object.assign(response, methods);
  } catch {
    Object.defineProperties(response, methodProperties(methods));
  }
}

/** What the forwarders on `prototype` stand for, while they are still its methods (the app may put others there). */
function forwardedBy(prototype: Record<string, any>): WriteMethods | undefined {
  const installed = forwarding.get(prototype);
  return installed && WRITE_METHODS.every((name) => prototype[name] === installed.forwarders[name]) ? installed.forwarded : undefined;
}

/** A prototype that is not Node's own (shared by every response in the process) and whose write methods may be redefined. */
function canForward(prototype: object): boolean {
  return prototype !== ServerResponse.prototype && WRITE_METHODS.every((name) => Object.getOwnPropertyDescriptor(prototype, name)?.configurable ?? true);
}

function addForwarders(prototype: Record<string, any>): WriteMethods {
  // What the forwarders stand for: the prototype's own methods, else those it inherits, looked up
  // on each call. A forwarder of ours still there (the app replaced only some methods) is never
  // stood for, as it would call the stand-ins again: what it stood for is.
  const parent = Object.getPrototypeOf(prototype);
  const previous = forwarding.get(prototype);
  const forwarded = {} as WriteMethods;
  for (const name of WRITE_METHODS) {
    const method = Object.hasOwn(prototype, name) ? prototype[name] : undefined;
    const stoodFor = previous && method === previous.forwarders[name] ? () => previous.forwarded[name] : () => method ?? parent[name];
    Object.defineProperty(forwarded, name, { get: stoodFor });
  }
  const forwarders = {} as WriteMethods;
  for (const name of WRITE_METHODS) {
    // Also what a reference to a forwarder, kept past the stand-ins, keeps calling.
    forwarders[name] = function (this: ServerResponse, ...args: unknown[]) {
      return ((standIns.get(this) ?? forwarded)[name] as (...args: unknown[]) => unknown).apply(this, args);
    } as never;
  }
  Object.defineProperties(prototype, methodProperties(forwarders));
  forwarding.set(prototype, { forwarders, forwarded });
  return forwarded;
}

function methodProperties(methods: WriteMethods): PropertyDescriptorMap {
  const properties: PropertyDescriptorMap = {};
  for (const name of WRITE_METHODS) properties[name] = { value: methods[name], writable: true, configurable: true };
  return properties;
}

/** Applies `writeHead(status[, message][, headers])` to the response object without sending it. */
function recordHead(response: ServerResponse, args: any[]): void {
  const [status, second, third] = args;
  response.statusCode = status;
  let headers = third;
  if (typeof second === 'string') response.statusMessage = second;
  else headers = second;
  if (Array.isArray(headers)) {
    const pairs: [string, unknown][] = Array.isArray(headers[0])
      ? headers
      : headers.flatMap((value, i) => (i % 2 === 0 ? [[value, headers[i + 1]]] : []));
    // As Node does: the array's values replace earlier ones, and a name it repeats keeps each value.
    for (const [name] of pairs) response.removeHeader(name);
    for (const [name, value] of pairs) response.appendHeader(name, value as string);
  } else if (headers) {
    for (const [name, value] of Object.entries(headers)) if (value !== undefined) response.setHeader(name, value as string);
  }
}

function toBuffer(chunk: unknown, encoding?: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return Buffer.from(String(chunk), typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
}

function settle(callback: WriteCallback | undefined): void {
  if (callback) process.nextTick(callback);
}
