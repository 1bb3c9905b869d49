import { IdempotencyErrorCode } from '../idempotency.exceptions';
import type { IdempotentRouteOptions } from '../idempotency-options.interface';

/** An OpenAPI 3.0 schema object (only what this module writes). */
export type OpenApiSchema = Record<string, unknown>;

/** The status codes the module answers with on an idempotent route, and what each can carry. */
export interface DocumentedError {
  status: number;
  description: string;
  codes: IdempotencyErrorCode[];
  /** The answer carries `Retry-After` (whole seconds) for some of its codes. */
  retryAfter: boolean;
}

/**
 * The errors a route can answer with, per status, given its `@Idempotent()` options. Module-level
 * options are unknown when a decorator runs, so the defaults are documented (conflicts are 409;
 * `conflictStatus: 422` moves `idempotency_key_conflict` to 422; `onUnresolvedScope: 'bypass'` never
 * answers 401). `test/openapi.e2e-spec.ts` checks every code here against the status it really has.
 */
export function documentedErrors(route: IdempotentRouteOptions): DocumentedError[] {
  const errors: DocumentedError[] = [
    {
      status: 400,
      description: route.required
        ? 'The `Idempotency-Key` header is missing (this route requires one), sent twice, empty, longer than 255 characters or not printable ASCII. The handler did not run.'
        : 'The `Idempotency-Key` header is sent twice, empty, longer than 255 characters or not printable ASCII. The handler did not run.',
      codes: route.required ? [IdempotencyErrorCode.InvalidKey, IdempotencyErrorCode.MissingKey] : [IdempotencyErrorCode.InvalidKey],
      retryAfter: false,
    },
    {
      status: 401,
      description:
        'An `Idempotency-Key` was sent but the caller could not be identified, so the key cannot be scoped (not sent when the module runs with `onUnresolvedScope: "bypass"`). The handler did not run.',
      codes: [IdempotencyErrorCode.ScopeUnresolved],
      retryAfter: false,
    },
    {
      status: 409,
      description: [
        'The handler did not run:',
        '`idempotency_key_conflict`: the key was already used with a different request (method, path, query or body); 422 instead when the module runs with `conflictStatus: 422`;',
        '`idempotency_key_in_use`: a request with this key is still being processed; retry with the same key after `Retry-After`;',
        '`idempotency_response_not_stored`: the original request completed but its response was too large to be stored for replay',
        ...(route.transactional
          ? [';', '`transaction_conflict`: the request conflicted with a concurrent transaction and was rolled back; retry with the same key after `Retry-After`']
          : []),
        '.',
      ].join(' ').replace(/ ([;.])/g, '$1'),
      codes: [
        IdempotencyErrorCode.KeyConflict,
        IdempotencyErrorCode.KeyInUse,
        IdempotencyErrorCode.ResponseNotStored,
        ...(route.transactional ? [IdempotencyErrorCode.TransactionConflict] : []),
      ],
      retryAfter: true,
    },
    ...(route.transactional
      ? [
          {
            status: 500,
            description: 'The transaction could not be committed: nothing was changed and nothing was stored; retrying with the same key runs the request again.',
            codes: [IdempotencyErrorCode.InternalError],
            retryAfter: false,
          },
        ]
      : []),
    {
      status: 503,
      description: 'Idempotency records cannot be reached right now, so the request was not processed (fail closed). Retry with the same key after `Retry-After`.',
      codes: [IdempotencyErrorCode.StoreUnavailable],
      retryAfter: true,
    },
  ];
  return errors;
}

/** The schema of the module's default error envelope (`formatErrorEnvelope`, SPEC W11), narrowed to `codes`. */
export function errorEnvelopeSchema(codes: readonly string[]): OpenApiSchema {
  return {
    type: 'object',
    required: ['error'],
    properties: {
      error: {
        type: 'object',
        required: ['type', 'code', 'message', 'param', 'docs_url', 'request_id', 'suggestion'],
        properties: {
          type: { type: 'string', enum: ['idempotency_error'] },
          code: { type: 'string', enum: [...codes], description: 'Machine-readable error code.' },
          message: { type: 'string', description: 'What went wrong, for humans.' },
          param: { type: 'string', nullable: true, description: '`Idempotency-Key` for errors about the header itself, else null.' },
          docs_url: { type: 'string', format: 'uri', description: 'Documentation of this error code.' },
          request_id: { type: 'string', nullable: true, description: "The request's `x-request-id` when the host sets one, else null." },
          suggestion: { type: 'string', description: 'What the client should do next.' },
        },
      },
    },
  };
}
