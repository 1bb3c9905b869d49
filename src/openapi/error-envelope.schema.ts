import { IdempotencyErrorCode } from '../idempotency.exceptions';
import type { IdempotentRouteOptions } from '../idempotency-options.interface';

/** An OpenAPI 3.0 schema object (only what this module writes). */
export type OpenApiSchema = Record<string, unknown>;

/** One status the module answers with on an idempotent route, and the codes it can carry. */
export interface DocumentedError {
  status: number;
  summary: string;
  codes: IdempotencyErrorCode[];
  /** The answer carries `Retry-After` (whole seconds) for some of its codes. */
  retryAfter: boolean;
}

/** When each code is answered, for the response descriptions. */
const CODE_NOTES: Record<IdempotencyErrorCode, string> = {
  invalid_idempotency_key: 'the header was sent twice, or is empty, longer than 255 characters or not printable ASCII.',
  missing_idempotency_key: 'this route requires an `Idempotency-Key` header and none was sent.',
  idempotency_scope_unresolved: 'a key was sent but the caller could not be identified, so the key cannot be scoped.',
  idempotency_key_conflict:
    'the key was already used with a different request (method, path, query or body). Answered with 422 instead when the module runs with `conflictStatus: 422`.',
  idempotency_key_in_use: 'a request with this key is still being processed; retry with the same key after `Retry-After`.',
  idempotency_response_not_stored: 'the original request completed, but its response could not be stored for replay.',
  idempotency_record_unreadable:
    'the original request completed, but its stored response cannot be opened (only with the `encryption` option: ' +
    'a retired key, an altered record, or another credential than the original request).',
  transaction_conflict: 'the request conflicted with a concurrent transaction and was rolled back; retry with the same key after `Retry-After`.',
  internal_error: 'the transaction could not be committed: nothing was changed or stored, and a retry with the same key runs the request again.',
  idempotency_store_unavailable: 'idempotency records cannot be reached right now (fail closed); retry with the same key after `Retry-After`.',
};

/**
 * The errors a route can answer with, per status, given its `@Idempotent()` options. Module-level
 * options are unknown when a decorator runs, so their defaults are documented (see the notes of
 * `idempotency_key_conflict` and of the 401). `test/openapi.e2e-spec.ts` checks every code listed
 * here against the status the module really answers it with.
 */
export function documentedErrors(route: IdempotentRouteOptions): DocumentedError[] {
  const { InvalidKey, MissingKey, ScopeUnresolved, KeyConflict, KeyInUse, ResponseNotStored } = IdempotencyErrorCode;
  const { RecordUnreadable, TransactionConflict, InternalError, StoreUnavailable } = IdempotencyErrorCode;
  const unanswered = [KeyConflict, KeyInUse, ResponseNotStored, RecordUnreadable];
  const errors: DocumentedError[] = [
    { status: 400, summary: 'Invalid Idempotency-Key; the handler did not run.', codes: route.required ? [InvalidKey, MissingKey] : [InvalidKey], retryAfter: false },
    {
      status: 401,
      summary: 'Caller unknown, so the Idempotency-Key cannot be scoped; the handler did not run. Not answered when the module runs with `onUnresolvedScope: "bypass"`.',
      codes: [ScopeUnresolved],
      retryAfter: false,
    },
    {
      status: 409,
      summary: 'The Idempotency-Key cannot be used for this request now; the handler did not run.',
      codes: route.transactional ? [...unanswered, TransactionConflict] : unanswered,
      retryAfter: true,
    },
  ];
  if (route.transactional) {
    errors.push({ status: 500, summary: 'The transaction was not committed.', codes: [InternalError], retryAfter: false });
  }
  errors.push({ status: 503, summary: 'Idempotency store unavailable; the request was not processed.', codes: [StoreUnavailable], retryAfter: true });
  return errors;
}

/** The Markdown description of a documented error: its summary, then each code and when it is answered. */
export function describeDocumentedError(error: DocumentedError): string {
  return [error.summary, '', ...error.codes.map((code) => `- \`${code}\`: ${CODE_NOTES[code]}`)].join('\n');
}

/**
 * The schema of the module's default error envelope (`formatErrorEnvelope`), with `code`
 * narrowed to `codes`. A host that swaps the renderer with `formatError` answers something else.
 */
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
