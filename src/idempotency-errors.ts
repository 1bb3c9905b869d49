import { Inject, Injectable } from '@nestjs/common';
import type { HttpExchange } from './capture/http-exchange';
import type { Replacement } from './capture/response-capture';
import { IdempotencyException, describeError, type IdempotencyErrorCode } from './idempotency.exceptions';
import type { ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from './idempotency-options';
import { PROBLEM_JSON } from './problem-details';

/** Seconds a client is told to wait before retrying a key that is busy or a store that is down. */
const RETRY_AFTER_SECONDS = '1';

/** Headers that describe a particular answer (besides content-*), dropped when it is replaced. */
const ANSWER_HEADERS = new Set(['etag', 'last-modified', 'location', 'retry-after', 'transfer-encoding']);

/** How an error is answered: its status (when not the code's own) and whether to add Retry-After. */
export interface ErrorAnswer {
  status?: number;
  retryAfter?: boolean;
}

/** Renders the module's errors with the host's options (formatter, docs URLs), in one place. */
@Injectable()
export class IdempotencyErrors {
  private readonly problems: boolean;

  constructor(@Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions) {
    this.problems = options.errorFormat === 'problem+json';
  }

  /**
   * An exception for Nest's exception layer to answer with; Retry-After and a problem details
   * media type are set on the response (both platforms keep a JSON media type set there).
   */
  exception(code: IdempotencyErrorCode, exchange: HttpExchange, answer: ErrorAnswer = {}): IdempotencyException {
    const details = this.details(code, exchange, answer);
    if (answer.retryAfter) exchange.response.setHeader('Retry-After', RETRY_AFTER_SECONDS);
    if (this.problems) exchange.response.setHeader('Content-Type', PROBLEM_JSON);
    return new IdempotencyException(details, this.options.formatError(details));
  }

  /**
   * A complete response, for when the exception layer has already answered and its answer must be
   * replaced: headers that describe that answer go, the rest (request ids, CORS) stays.
   */
  replacement(code: IdempotencyErrorCode, exchange: HttpExchange, answer: ErrorAnswer = {}): Replacement {
    const details = this.details(code, exchange, answer);
    const body = Buffer.from(JSON.stringify(this.options.formatError(details)));
    const headers: Record<string, string> = {
      'content-type': `${this.problems ? PROBLEM_JSON : 'application/json'}; charset=utf-8`,
      'content-length': String(body.length),
    };
    if (answer.retryAfter) headers['retry-after'] = RETRY_AFTER_SECONDS;
    const { expiresHeader } = this.options;
    return {
      response: { status: details.status, headers, body },
      keepHeader: (name) => !ANSWER_HEADERS.has(name) && !name.startsWith('content-') && name !== expiresHeader,
    };
  }

  private details(code: IdempotencyErrorCode, exchange: HttpExchange, answer: ErrorAnswer) {
    const requestId = exchange.response.getHeader('x-request-id') ?? exchange.request.headers['x-request-id'];
    return describeError(code, {
      status: answer.status,
      header: this.options.header,
      docsUrl: this.options.docsUrl,
      requestId: typeof requestId === 'string' ? requestId : null,
    });
  }
}
