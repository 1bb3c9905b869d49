import { HttpException } from '@nestjs/common';

/** The `type` of an error of the sample API, as in the Patomic envelope. */
export type ApiErrorType = 'invalid_request_error' | 'authentication_error' | 'api_error' | 'idempotency_error';

/** What an error of the sample says, before the request id is known. */
export interface ApiErrorDetails {
  status: number;
  type: ApiErrorType;
  code: string;
  message: string;
  param: string | null;
  suggestion: string;
}

/** The Patomic error envelope: every field is always present. */
export interface ApiErrorBody {
  error: {
    type: ApiErrorType;
    code: string;
    message: string;
    param: string | null;
    docs_url: string;
    request_id: string | null;
    suggestion: string;
  };
}

/** Same rule as the idempotency module's default `docsUrl`, so every error links to one site. */
export function docsUrlOf(code: string): string {
  return `https://docs.patomic.dev/errors/${code.replace(/_/g, '-')}`;
}

/** Renders error details as the envelope, with the request id of the request that failed. */
export function renderErrorEnvelope(details: ApiErrorDetails, requestId: string | null): ApiErrorBody {
  return {
    error: {
      type: details.type,
      code: details.code,
      message: details.message,
      param: details.param,
      docs_url: docsUrlOf(details.code),
      request_id: requestId,
      suggestion: details.suggestion,
    },
  };
}

/**
 * An error the sample answers on purpose. The exception filter renders it as the envelope; the
 * request id is added there because it belongs to the request, not to the error.
 */
export class ApiError extends HttpException {
  constructor(readonly details: ApiErrorDetails) {
    super(details.message, details.status);
  }

  /** 400: a field of the body or of the query string is of the wrong type, out of range or unknown. */
  static invalidParameter(param: string, message: string): ApiError {
    return new ApiError({
      status: 400,
      type: 'invalid_request_error',
      code: 'invalid_parameter',
      message,
      param,
      suggestion: `Fix the "${param}" parameter and send the request again with a new Idempotency-Key.`,
    });
  }

  /** 400: a required field is absent. */
  static parameterMissing(param: string): ApiError {
    return new ApiError({
      status: 400,
      type: 'invalid_request_error',
      code: 'parameter_missing',
      message: `The "${param}" parameter is required.`,
      param,
      suggestion: `Send "${param}" and try again with a new Idempotency-Key.`,
    });
  }

  /** 400: the body is JSON but not an object of fields. */
  static invalidBody(message: string): ApiError {
    return new ApiError({
      status: 400,
      type: 'invalid_request_error',
      code: 'invalid_body',
      message,
      param: null,
      suggestion: 'Send a JSON object such as {"name": "CI integration"}.',
    });
  }

  /** 415: a body was sent, but not as JSON (e.g. `curl -d` without a Content-Type sends a form). */
  static unsupportedMediaType(): ApiError {
    return new ApiError({
      status: 415,
      type: 'invalid_request_error',
      code: 'unsupported_media_type',
      message: 'The request body must be JSON.',
      param: null,
      suggestion: 'Send the body with "Content-Type: application/json".',
    });
  }

  /** 404: no resource with this id; ids that are not even well-formed are reported the same way. */
  static resourceMissing(resource: string, id: string): ApiError {
    return new ApiError({
      status: 404,
      type: 'invalid_request_error',
      code: 'resource_missing',
      message: `No ${resource} with id "${id}".`,
      param: 'id',
      suggestion: `List the ${resource}s (GET /v1/keys) to find a valid id.`,
    });
  }

  /**
   * 401: one answer for every authentication failure (missing, malformed, unknown or revoked key),
   * so a caller cannot probe which keys exist or were revoked.
   */
  static authentication(): ApiError {
    return new ApiError({
      status: 401,
      type: 'authentication_error',
      code: 'invalid_api_key',
      message: 'The request is not authenticated with a valid API key.',
      param: null,
      suggestion: 'Send an active key as "Authorization: Bearer ptmc_...".',
    });
  }
}
