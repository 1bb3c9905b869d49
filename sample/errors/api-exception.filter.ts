import { type ArgumentsHost, Catch, type ExceptionFilter, HttpException, Logger } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { IdempotencyException } from '../../src';
import { REQUEST_ID_HEADER } from '../request-id/request-id.middleware';
import { ApiError, type ApiErrorDetails, renderErrorEnvelope } from './api-error';

/**
 * Renders every error of the sample as the Patomic envelope, with the request's `x-request-id` as
 * `request_id`. The idempotency module's own errors already are envelopes: they go out unchanged,
 * with the headers the module set (such as `Retry-After`).
 *
 * On an `@Idempotent()` route this filter runs below the module's capture, so a 4xx it renders
 * after the key was claimed is stored and replayed byte for byte like any other answer.
 */
@Catch()
export class ApiExceptionFilter implements ExceptionFilter {
  private readonly logger = new Logger('ApiExceptionFilter');

  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    const { httpAdapter } = this.adapterHost;
    const http = host.switchToHttp();
    const request = http.getRequest();
    const response = http.getResponse();
    if (httpAdapter.isHeadersSent(response)) {
      // A stream failed after its head went out: the only honest thing left is to cut it short.
      this.logger.error(`Error after the response started: ${describe(exception)}`);
      httpAdapter.end(response);
      return;
    }
    if (exception instanceof IdempotencyException) {
      httpAdapter.reply(response, exception.getResponse(), exception.getStatus());
      return;
    }
    const requestId = readRequestId(httpAdapter.getHeader(response, REQUEST_ID_HEADER));
    const details = this.describe(exception, `${request.method} ${request.originalUrl ?? request.url}`, requestId);
    httpAdapter.reply(response, renderErrorEnvelope(details, requestId), details.status);
  }

  private describe(exception: unknown, route: string, requestId: string | null): ApiErrorDetails {
    if (exception instanceof ApiError) return exception.details;
    if (exception instanceof HttpException && exception.getStatus() < 500) return describeClientError(exception, route);
    // Anything else is our fault: log it with the id the client sees, answer without internals.
    this.logger.error(`Unhandled error in ${route} (request ${requestId ?? 'without id'}): ${describe(exception)}`, (exception as Error)?.stack);
    return {
      status: 500,
      type: 'api_error',
      code: 'internal_error',
      message: 'Something went wrong on our side.',
      param: null,
      suggestion: 'Retry the request with the same Idempotency-Key; if it keeps failing, contact support with the request_id.',
    };
  }
}

/** Client errors raised by Nest or Express themselves (unknown route, unreadable body...). */
function describeClientError(exception: HttpException, route: string): ApiErrorDetails {
  const status = exception.getStatus();
  const cause = exception.cause as { type?: string } | undefined;
  const common = { status, type: 'invalid_request_error' as const, param: null };
  if (status === 404) {
    return {
      ...common,
      code: 'route_not_found',
      message: `Unrecognized request URL (${route}).`,
      suggestion: 'Check the method and the path; this API serves /v1/keys and /v1/keys/:id.',
    };
  }
  if (status === 400 && cause?.type === 'entity.parse.failed') {
    return {
      ...common,
      code: 'invalid_json',
      message: `The request body is not valid JSON: ${exception.message}`,
      suggestion: 'Send a JSON object with "Content-Type: application/json".',
    };
  }
  if (status === 413) {
    return {
      ...common,
      code: 'request_too_large',
      message: 'The request body is too large.',
      suggestion: 'Send a smaller body; keys need only a name and a rate limit.',
    };
  }
  if (status === 415) {
    return {
      ...common,
      code: 'unsupported_media_type',
      message: 'The request body must be JSON.',
      suggestion: 'Send the body with "Content-Type: application/json".',
    };
  }
  return {
    ...common,
    code: 'invalid_request',
    message: exception.message,
    suggestion: 'Check the request against the API reference and send it again.',
  };
}

function readRequestId(value: unknown): string | null {
  return typeof value === 'string' ? value : null;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
