import { randomUUID } from 'node:crypto';
import type { IdempotencyErrorDetails } from './idempotency.exceptions';

/** The media type of RFC 9457 problem details. */
export const PROBLEM_JSON = 'application/problem+json';

/** An RFC 9457 problem details object: how `errorFormat: 'problem+json'` renders the module's errors. */
export interface IdempotencyProblemDetails {
  /** Documentation of the code (`docsUrl`). */
  type: string;
  title: string;
  status: number;
  /** What went wrong, for humans. */
  detail: string;
  /** Unique per occurrence (`urn:uuid:…`). */
  instance: string;
  /** Machine-readable error code (extension member). */
  code: string;
  /** A retry with the same key may succeed (extension member). */
  retryable: boolean;
}

/** Renders error details as RFC 9457 problem details. */
export function formatProblemDetails(error: IdempotencyErrorDetails): IdempotencyProblemDetails {
  return {
    type: error.docsUrl,
    title: error.title,
    status: error.status,
    detail: error.message,
    instance: `urn:uuid:${randomUUID()}`,
    code: error.code,
    retryable: error.retryable,
  };
}
