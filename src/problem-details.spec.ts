import { defaultDocsUrl, describeError } from './idempotency.exceptions';
import { formatProblemDetails } from './problem-details';

const UUID_URN = /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('formatProblemDetails', () => {
  const details = (status?: number) =>
    describeError('idempotency_key_conflict', { requestId: 'req-1', docsUrl: defaultDocsUrl, status });

  it('renders RFC 9457 members from the details, with code and retryable as extension members', () => {
    const problem = formatProblemDetails(details());
    expect(problem).toEqual({
      type: 'https://docs.patomic.dev/errors/idempotency-key-conflict',
      title: details().title,
      status: 409,
      detail: details().message,
      instance: expect.stringMatching(UUID_URN),
      code: 'idempotency_key_conflict',
      retryable: false,
    });
  });

  it('gives each occurrence its own instance', () => {
    expect(formatProblemDetails(details()).instance).not.toBe(formatProblemDetails(details()).instance);
  });

  it('carries the status the error is answered with', () => {
    expect(formatProblemDetails(details(422)).status).toBe(422);
  });
});
