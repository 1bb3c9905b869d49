import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import type { HttpExchange } from './capture/http-exchange';
import { IdempotencyErrors } from './idempotency-errors';
import { defaultDocsUrl, formatErrorEnvelope, type IdempotencyErrorDetails } from './idempotency.exceptions';
import { formatProblemDetails } from './problem-details';
import type { ResolvedIdempotencyOptions } from './idempotency-options.interface';

// Only the options the errors read, so that this spec exercises nothing of resolveOptions.
type ReadOptions = 'formatError' | 'docsUrl' | 'expiresHeader' | 'errorFormat';
const withOptions = (options: Pick<ResolvedIdempotencyOptions, ReadOptions>) =>
  new IdempotencyErrors(options as ResolvedIdempotencyOptions);

/** An exchange over real, unconnected Node request and response objects. */
function exchange(requestIdHeader?: string): HttpExchange {
  const request = new IncomingMessage(new Socket());
  if (requestIdHeader !== undefined) request.headers['x-request-id'] = requestIdHeader;
  return { request, response: new ServerResponse(request), method: 'POST', url: '/v1/keys', body: {}, hasBody: true };
}

describe('IdempotencyErrors', () => {
  const errors = withOptions({
    formatError: formatErrorEnvelope,
    docsUrl: defaultDocsUrl,
    expiresHeader: false,
    errorFormat: 'patomic',
  });

  describe('exception', () => {
    it('renders the Patomic envelope with the code, its param, docs URL and the request id', () => {
      const error = errors.exception('invalid_idempotency_key', exchange('req-1'));
      expect(error.getStatus()).toBe(400);
      expect(error.getResponse()).toEqual({
        error: {
          type: 'idempotency_error',
          code: 'invalid_idempotency_key',
          message: error.details.message,
          param: 'Idempotency-Key',
          docs_url: 'https://docs.patomic.dev/errors/invalid-idempotency-key',
          request_id: 'req-1',
          suggestion: error.details.suggestion,
        },
      });
    });

    it("answers with the code's own status unless told another", () => {
      expect(errors.exception('idempotency_key_conflict', exchange()).getStatus()).toBe(409);
      const unprocessable = errors.exception('idempotency_key_conflict', exchange(), { status: 422 });
      expect(unprocessable.getStatus()).toBe(422);
      expect(unprocessable.details.status).toBe(422);
    });

    it('sets Retry-After on the response only when asked', () => {
      const busy = exchange();
      errors.exception('idempotency_key_in_use', busy, { retryAfter: true });
      expect(busy.response.getHeader('retry-after')).toBe('1');
      const conflict = exchange();
      errors.exception('idempotency_key_conflict', conflict);
      expect(conflict.response.hasHeader('retry-after')).toBe(false);
    });

    it('takes the request id the response already carries over the one the request sent', () => {
      const both = exchange('from-request');
      both.response.setHeader('x-request-id', 'from-response');
      expect(errors.exception('internal_error', both).details.requestId).toBe('from-response');
    });

    it('leaves the request id out when it is not a single string', () => {
      const numbered = exchange();
      numbered.response.setHeader('x-request-id', 7);
      expect(errors.exception('internal_error', numbered).details.requestId).toBeNull();
      expect(errors.exception('internal_error', exchange()).details.requestId).toBeNull();
    });
  });

  describe('replacement', () => {
    // Renders the details as they are, to show what the replacement was built from.
    const formatError = (details: IdempotencyErrorDetails) => ({ ...details });
    const docsUrl = (code: string) => `https://errors.test/${code}`;
    const custom = withOptions({ formatError, docsUrl, expiresHeader: 'x-key-expires', errorFormat: 'patomic' });

    it('is a JSON response rendered by formatError, with its status and length', () => {
      const { response } = custom.replacement('idempotency_store_unavailable', exchange('req-2'), { retryAfter: true });
      const details = JSON.parse(response.body.toString());
      expect(details).toMatchObject({
        status: 503,
        code: 'idempotency_store_unavailable',
        docsUrl: 'https://errors.test/idempotency_store_unavailable',
        requestId: 'req-2',
      });
      expect(response.status).toBe(503);
      expect(response.headers).toEqual({
        'content-type': 'application/json; charset=utf-8',
        'content-length': String(response.body.length),
        'retry-after': '1',
      });
    });

    it('has no Retry-After unless asked', () => {
      const { response } = custom.replacement('idempotency_key_conflict', exchange(), { status: 422 });
      expect(response.status).toBe(422);
      expect(response.headers).not.toHaveProperty('retry-after');
    });

    it("drops the replaced answer's own headers and keeps the others", () => {
      const { keepHeader } = custom.replacement('internal_error', exchange());
      const dropped = ['etag', 'last-modified', 'location', 'retry-after', 'transfer-encoding', 'content-language'];
      const kept = ['x-request-id', 'access-control-allow-origin', 'set-cookie', 'idempotency-expires-at'];
      expect([...dropped, 'x-key-expires'].filter(keepHeader)).toEqual([]);
      expect(kept.filter(keepHeader)).toEqual(kept);
    });
  });

  describe("errorFormat: 'problem+json'", () => {
    const problems = withOptions({
      formatError: formatProblemDetails,
      docsUrl: defaultDocsUrl,
      expiresHeader: false,
      errorFormat: 'problem+json',
    });

    it('labels an exception application/problem+json on the response, which the platform keeps for the body', () => {
      const busy = exchange();
      const error = problems.exception('idempotency_key_in_use', busy, { retryAfter: true });
      expect(busy.response.getHeader('content-type')).toBe('application/problem+json');
      expect(error.getResponse()).toMatchObject({ code: 'idempotency_key_in_use', retryable: true, status: 409 });
    });

    it('labels a replacement application/problem+json', () => {
      const { response } = problems.replacement('internal_error', exchange());
      expect(response.headers['content-type']).toBe('application/problem+json; charset=utf-8');
      const body = JSON.parse(response.body.toString());
      expect(body).toMatchObject({ code: 'internal_error', status: 500, retryable: false });
    });

    it('leaves the content type of a Patomic envelope to the platform', () => {
      const busy = exchange();
      errors.exception('idempotency_key_in_use', busy);
      expect(busy.response.hasHeader('content-type')).toBe(false);
    });
  });
});
