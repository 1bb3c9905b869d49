import { HttpException } from '@nestjs/common';
import { IDEMPOTENCY_KEY_HEADER } from './idempotency.constants';

/** Every error code the module answers with. */
export const IdempotencyErrorCode = {
  InvalidKey: 'invalid_idempotency_key',
  MissingKey: 'missing_idempotency_key',
  ScopeUnresolved: 'idempotency_scope_unresolved',
  KeyConflict: 'idempotency_key_conflict',
  KeyInUse: 'idempotency_key_in_use',
  ResponseNotStored: 'idempotency_response_not_stored',
  RecordUnreadable: 'idempotency_record_unreadable',
  StoreUnavailable: 'idempotency_store_unavailable',
  TransactionConflict: 'transaction_conflict',
  InternalError: 'internal_error',
} as const;

/** One of the module's error codes. */
export type IdempotencyErrorCode = (typeof IdempotencyErrorCode)[keyof typeof IdempotencyErrorCode];

/** What the module knows about an error before it is rendered (input of `formatError`). */
export interface IdempotencyErrorDetails {
  status: number;
  code: IdempotencyErrorCode;
  /** A short human title of the code (a problem details `title`). */
  title: string;
  message: string;
  param: string | null;
  suggestion: string;
  docsUrl: string;
  requestId: string | null;
  /** A retry with the same key may succeed: the key is busy, the store down, or a transaction lost a race. */
  retryable: boolean;
}

/** The Patomic error envelope, the default rendering of every module error (every field always present). */
export interface IdempotencyErrorBody {
  error: {
    type: 'idempotency_error';
    code: string;
    message: string;
    param: string | null;
    docs_url: string;
    request_id: string | null;
    suggestion: string;
  };
}

interface ErrorTemplate {
  status: number;
  title: string;
  retryable: boolean;
  message: string;
  suggestion: string;
  param: string | null;
}

const KEY_PARAM = IDEMPOTENCY_KEY_HEADER;

const TEMPLATES: Record<IdempotencyErrorCode, ErrorTemplate> = {
  invalid_idempotency_key: {
    status: 400,
    title: 'Invalid Idempotency-Key',
    retryable: false,
    param: KEY_PARAM,
    message: 'The Idempotency-Key header must be sent once, with 1-255 printable ASCII characters.',
    suggestion: 'Send a single Idempotency-Key header such as a UUIDv4.',
  },
  missing_idempotency_key: {
    status: 400,
    title: 'Idempotency-Key required',
    retryable: false,
    param: KEY_PARAM,
    message: 'This endpoint requires an Idempotency-Key header.',
    suggestion: 'Generate a UUIDv4 per logical request and send it as Idempotency-Key on every attempt.',
  },
  idempotency_scope_unresolved: {
    status: 401,
    title: 'Caller not identified',
    retryable: false,
    param: null,
    message: 'The caller could not be identified, so the Idempotency-Key cannot be scoped.',
    suggestion: 'Authenticate the request (Authorization: Bearer <API key>) and retry with the same key.',
  },
  idempotency_key_conflict: {
    status: 409,
    title: 'Idempotency-Key used for another request',
    retryable: false,
    param: null,
    message: 'This Idempotency-Key was already used with a different request (method, path, query or body).',
    suggestion: 'Use a new Idempotency-Key for a different request, or resend the original request unchanged.',
  },
  idempotency_key_in_use: {
    status: 409,
    title: 'Idempotency-Key in use',
    retryable: true,
    param: null,
    message: 'A request with this Idempotency-Key is still being processed.',
    suggestion: 'Retry with the same key after the Retry-After delay to receive the original response.',
  },
  idempotency_response_not_stored: {
    status: 409,
    title: 'Original response not stored',
    retryable: false,
    param: null,
    message: 'The original request with this Idempotency-Key completed, but its response could not be stored for replay (it was too large, or the application answered before the handler finished).',
    suggestion: 'Fetch the resulting resource instead of retrying, or use a new key for a new request.',
  },
  idempotency_record_unreadable: {
    status: 409,
    title: 'Stored response unreadable',
    retryable: false,
    param: null,
    message:
      'The original request with this Idempotency-Key completed, but its stored response cannot be opened (its encryption key ' +
      'was retired, the record was altered, or it is bound to another credential); it is not replayed, and nothing ran again.',
    suggestion: 'Retry with the credential of the original request, or fetch the resulting resource; a new key only for a new request.',
  },
  idempotency_store_unavailable: {
    status: 503,
    title: 'Idempotency store unavailable',
    retryable: true,
    param: null,
    message: 'Idempotency records cannot be reached right now, so the request was not processed.',
    suggestion: 'Retry with the same Idempotency-Key after the Retry-After delay.',
  },
  transaction_conflict: {
    status: 409,
    title: 'Transaction conflict',
    retryable: true,
    param: null,
    message: 'The request conflicted with a concurrent transaction and was rolled back; nothing was changed.',
    suggestion: 'Retry with the same Idempotency-Key after the Retry-After delay.',
  },
  internal_error: {
    status: 500,
    title: 'Transaction not committed',
    retryable: false,
    param: null,
    message: 'The request could not be committed, so nothing was changed and nothing was stored.',
    suggestion: 'Retry with the same Idempotency-Key; the request will run again.',
  },
};

/** Builds the default `docs_url` of an error code. */
export function defaultDocsUrl(code: string): string {
  return `https://docs.patomic.dev/errors/${code.replace(/_/g, '-')}`;
}

/** Renders error details as the Patomic envelope. */
export function formatErrorEnvelope(error: IdempotencyErrorDetails): IdempotencyErrorBody {
  return {
    error: {
      type: 'idempotency_error',
      code: error.code,
      message: error.message,
      param: error.param,
      docs_url: error.docsUrl,
      request_id: error.requestId,
      suggestion: error.suggestion,
    },
  };
}

/**
 * Fills in the template of a code; the status may be overridden (e.g. 422 for conflicts), and
 * `header` names the key's header when it is not `Idempotency-Key`.
 */
export function describeError(
  code: IdempotencyErrorCode,
  context: { requestId: string | null; docsUrl: (code: string) => string; status?: number; header?: string },
): IdempotencyErrorDetails {
  const template = TEMPLATES[code];
  const named = (text: string) => (context.header ? text.replaceAll(KEY_PARAM, context.header) : text);
  return {
    status: context.status ?? template.status,
    code,
    title: named(template.title),
    message: named(template.message),
    param: template.param && named(template.param),
    suggestion: named(template.suggestion),
    docsUrl: context.docsUrl(code),
    requestId: context.requestId,
    retryable: template.retryable,
  };
}

/** An error answered by the module; its response body is already rendered by `formatError`. */
export class IdempotencyException extends HttpException {
  constructor(
    readonly details: IdempotencyErrorDetails,
    body: unknown,
  ) {
    super(body as Record<string, unknown>, details.status);
  }
}

/** Thrown at bootstrap when the module is misconfigured; the message ends with the fix. */
export class IdempotencyConfigurationError extends Error {
  override name = 'IdempotencyConfigurationError';
}
