import { RequestMethod } from '@nestjs/common';
import { IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_ROUTE_METADATA } from '../idempotency.constants';
import type { IdempotentRouteOptions, ResolvedIdempotencyOptions } from '../idempotency-options.interface';
import { PROBLEM_JSON } from '../problem-details';
import { describeDocumentedError, documentedErrors, errorEnvelopeSchema } from './error-envelope.schema';
import { problemDetailsSchema } from './problem-details.schema';

/*
 * OpenAPI documentation of `@Idempotent()` routes for hosts that use @nestjs/swagger.
 *
 * Why metadata keys instead of @nestjs/swagger's decorators: @nestjs/swagger is an optional peer,
 * so src/ cannot import it statically, and a lazy load is fragile here: this code runs as CommonJS
 * in production (where `require` would work) and as native ESM under Jest (no `require`, no
 * `__dirname`; a dynamic `import()` is async and would come after the decorators ran). Instead this
 * file writes, with `Reflect.defineMetadata`, the very metadata that @nestjs/swagger's own
 * `@ApiHeader()` and `@ApiResponse()` write on a handler, and that `SwaggerModule.createDocument()`
 * reads (keys and shapes below, from @nestjs/swagger 12 `dist/constants.js`,
 * `dist/decorators/api-header.decorator.js`, `dist/decorators/api-response.decorator.js`; they have
 * been stable since @nestjs/swagger 4). Without @nestjs/swagger nobody reads them and nothing
 * happens; no import of it exists anywhere in src/. `test/openapi.e2e-spec.ts` generates a real
 * document, so a change of these keys in a future @nestjs/swagger fails that test.
 *
 * Why written when the module is instantiated (see OpenApiDocumentation), not by `@Idempotent()`:
 * the document shows the module's options (header names, error format), unknown when a decorator
 * runs. A document is generated from a created application, usually before it is initialised
 * (`createDocument()` before `listen()`), so lifecycle hooks would come too late; by the time the
 * module's providers are instantiated, every decorator of every controller has run. Each handler is
 * documented from its host's own metadata as first seen, so an application created again with
 * other options (in tests, or several in one process) documents its own.
 */

/** What the document shows that depends on the module's options. */
export type DocumentedOptions = Pick<ResolvedIdempotencyOptions, 'errorFormat' | 'header' | 'replayedHeader'>;

/** `DECORATORS.API_PARAMETERS`: an array of parameter objects (`@ApiHeader()` on a method). */
const API_PARAMETERS = 'swagger/apiParameters';
/** `DECORATORS.API_HEADERS`: an array of header parameters (`@ApiHeader()` on a controller). */
const API_HEADERS = 'swagger/apiHeaders';
/** `DECORATORS.API_RESPONSE`: `{ [status]: { description, schema?, type?, headers?, ... } }` (`@ApiResponse()` on a method). */
const API_RESPONSE = 'swagger/apiResponse';
/** @nestjs/common's `METHOD_METADATA` and `HTTP_CODE_METADATA` (kept literal: `@nestjs/common/constants` is not public API). */
const METHOD_METADATA = 'method';
const HTTP_CODE_METADATA = '__httpCode__';

/** The HTTP methods the module makes idempotent (`IDEMPOTENT_METHODS`); routes of other methods (and `@All()`) are left undocumented. */
const DOCUMENTED_METHODS: ReadonlySet<RequestMethod> = new Set([RequestMethod.POST, RequestMethod.PUT, RequestMethod.PATCH, RequestMethod.DELETE]);

type ResponseEntry = Record<string, unknown> & {
  description?: string;
  schema?: unknown;
  type?: unknown;
  content?: unknown;
  headers?: Record<string, unknown>;
};
type Responses = Record<string, ResponseEntry>;
type Parameter = { name?: string; in?: string };
type Handler = (...args: unknown[]) => unknown;

/** The host's own metadata of each documented handler, before the module added to it. */
const hostMetadata = new WeakMap<Handler, { parameters: Parameter[]; responses: Responses }>();

/** Writes the OpenAPI metadata of every idempotent route of a controller (own and inherited handlers, as Nest routes them). */
export function documentController(controller: Function, documented: DocumentedOptions): void {
  const classOptions = Reflect.getMetadata(IDEMPOTENT_ROUTE_METADATA, controller) as IdempotentRouteOptions | undefined;
  const classHeaders = (Reflect.getMetadata(API_HEADERS, controller) as { name?: string }[] | undefined) ?? [];
  const seen = new Set<string>();
  for (let prototype = controller.prototype; prototype && prototype !== Object.prototype; prototype = Object.getPrototypeOf(prototype)) {
    for (const name of Object.getOwnPropertyNames(prototype)) {
      if (name === 'constructor' || seen.has(name)) continue;
      seen.add(name);
      const descriptor = Object.getOwnPropertyDescriptor(prototype, name);
      if (!descriptor || typeof descriptor.value !== 'function') continue;
      const handler = descriptor.value as Handler;
      // Handler options override the controller's, as in the interceptor.
      const options = (Reflect.getMetadata(IDEMPOTENT_ROUTE_METADATA, handler) as IdempotentRouteOptions | undefined) ?? classOptions;
      const method = Reflect.getMetadata(METHOD_METADATA, handler) as RequestMethod | undefined;
      if (!options || method === undefined || !DOCUMENTED_METHODS.has(method)) continue;
      documentHandler(handler, method, options, classHeaders, documented);
    }
  }
}

function documentHandler(
  handler: Handler,
  method: RequestMethod,
  options: IdempotentRouteOptions,
  classHeaders: Parameter[],
  documented: DocumentedOptions,
): void {
  let host = hostMetadata.get(handler);
  if (!host) {
    const parameters: Parameter[] = Reflect.getMetadata(API_PARAMETERS, handler) ?? [];
    host = { parameters, responses: Reflect.getMetadata(API_RESPONSE, handler) ?? {} };
    hostMetadata.set(handler, host);
  }
  // The words of the module name the key's header as configured.
  const named = (text: string) => text.replaceAll(IDEMPOTENCY_KEY_HEADER, documented.header);

  // The key's header, unless the host documents it itself.
  const isKeyHeader = (parameter: Parameter) => parameter.name?.toLowerCase() === documented.header.toLowerCase();
  const isKeyParameter = (parameter: Parameter) => parameter.in === 'header' && isKeyHeader(parameter);
  const hostDocumentsKey = host.parameters.some(isKeyParameter) || classHeaders.some(isKeyHeader);
  const parameters = hostDocumentsKey ? host.parameters : [...host.parameters, keyHeaderParameter(options, documented)];
  Reflect.defineMetadata(API_PARAMETERS, parameters, handler);

  const responses: Responses = {};
  // Stored answers (status < 500) are replayed with the replayed header: mark each one the host
  // declared, and when it declared no success, the one @nestjs/swagger would infer by itself (which
  // it no longer does once a handler has response metadata).
  const replayed = documented.replayedHeader ? { [documented.replayedHeader]: REPLAYED_HEADER_OBJECT } : undefined;
  for (const [status, entry] of Object.entries(host.responses)) {
    responses[status] = replayed && isReplayable(status) ? withHeaders(entry, replayed) : entry;
  }
  if (!Object.keys(host.responses).some((status) => /^[23]\d\d$/.test(status))) {
    responses[String(defaultStatus(handler, method))] = { description: '', ...(replayed ? { headers: replayed } : {}) };
  }
  for (const error of documentedErrors(options)) {
    const status = String(error.status);
    const body =
      documented.errorFormat === 'problem+json'
        ? { content: { [PROBLEM_JSON]: { schema: problemDetailsSchema(error.codes) } } }
        : { schema: errorEnvelopeSchema(error.codes) };
    const ours: ResponseEntry = {
      description: named(describeDocumentedError(error)),
      ...body,
      ...(error.retryAfter ? { headers: { 'Retry-After': RETRY_AFTER_HEADER_OBJECT } } : {}),
    };
    const theirs = responses[status];
    // A status the host documents itself (e.g. 400 for validation) keeps its schema and gains our codes.
    const hostHasBody = theirs && [theirs.schema, theirs.type, theirs.content].some((given) => given !== undefined);
    responses[status] = theirs
      ? {
          ...theirs,
          description: [theirs.description, ours.description].filter(Boolean).join('\n\n'),
          ...(hostHasBody ? {} : body),
          ...(ours.headers ? { headers: { ...ours.headers, ...theirs.headers } } : {}),
        }
      : ours;
  }
  Reflect.defineMetadata(API_RESPONSE, responses, handler);
}

/** What `@ApiHeader()` writes: `{ name, in: 'header', description, required, schema }`. */
function keyHeaderParameter(options: IdempotentRouteOptions, { header, replayedHeader }: DocumentedOptions) {
  const required = options.required === true;
  const marked = replayedHeader ? `, with \`${replayedHeader}: true\`` : '';
  return {
    name: header,
    in: 'header',
    required,
    description: [
      'A unique key per logical request (a UUIDv4, say), sent unchanged on every retry of it: a retry while the key ' +
        `is remembered (24 hours by default) gets the stored response of the first attempt${marked}, ` +
        'and the request is not processed again.',
      'Keys are scoped to the caller; reusing a key with a different method, path, query or body is an error.',
      required ? 'Required on this route.' : 'Optional: without it the request runs normally, with no idempotency.',
    ].join(' '),
    schema: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[\\x20-\\x7E]+$', example: '5f0c6e8a-2d0b-4e7e-9b8e-0c6f1f3e2a71' },
  };
}

const REPLAYED_HEADER_OBJECT = {
  description: '`true` when this response is the stored response of an earlier request with the same Idempotency-Key (a replay); absent on the first response.',
  required: false,
  schema: { type: 'string', enum: ['true'] },
};

const RETRY_AFTER_HEADER_OBJECT = {
  description: 'Seconds to wait before retrying with the same Idempotency-Key (sent with `idempotency_key_in_use`, `transaction_conflict` and `idempotency_store_unavailable`).',
  required: false,
  schema: { type: 'integer', minimum: 0 },
};

function isReplayable(status: string): boolean {
  return /^[1-4]\d\d$/.test(status);
}

function withHeaders(entry: ResponseEntry, headers: Record<string, unknown>): ResponseEntry {
  return { ...entry, headers: { ...headers, ...entry.headers } };
}

/** The status @nestjs/swagger documents for a handler without response metadata (`getStatusCode` of its response explorer). */
function defaultStatus(handler: Handler, method: RequestMethod): number {
  const status = Reflect.getMetadata(HTTP_CODE_METADATA, handler) as number | undefined;
  if (status) return status;
  return method === RequestMethod.POST ? 201 : 200;
}
