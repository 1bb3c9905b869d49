import { IncomingMessage, ServerResponse } from 'node:http';

/** The parts of a request/response pair the module needs, read the same way on Express and Fastify. */
export interface HttpExchange {
  request: IncomingMessage;
  response: ServerResponse;
  method: string;
  /** Concrete path and query string as sent. */
  url: string;
  /** The body as the platform's parser left it. */
  body: unknown;
  /** The request may carry a body: a declared length above 0, or chunks. */
  hasBody: boolean;
}

/**
 * Both platforms sit on Node's `http` objects: Express extends them, Fastify wraps them (`raw`).
 * Everything the module reads or patches is on those Node objects, so one code path serves both.
 */
export function toHttpExchange(request: any, response: any): HttpExchange {
  // instanceof rather than reading `raw`: a property Express's objects lack is a slow miss on them.
  const raw: IncomingMessage = request instanceof IncomingMessage ? request : request.raw;
  const headers = raw.headers;
  const length = headers['content-length'];
  return {
    request: raw,
    response: response instanceof ServerResponse ? response : response.raw,
    method: raw.method ?? 'GET',
    url: request.originalUrl ?? raw.url ?? '/',
    body: request.body,
    // A chunked body no parser read may hold anything, so it counts as a body (and one that is
    // never the same as another's); only a declared length of 0 is surely no body.
    hasBody: (length !== undefined && length !== '0') || headers['transfer-encoding'] !== undefined,
  };
}
