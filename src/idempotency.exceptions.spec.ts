import { IdempotencyErrorCode, defaultDocsUrl, describeError } from './idempotency.exceptions';

describe('describeError', () => {
  const codes = Object.values(IdempotencyErrorCode);
  const describeCode = (code: IdempotencyErrorCode) =>
    describeError(code, { requestId: null, docsUrl: defaultDocsUrl });
  const withParam: string[] = [IdempotencyErrorCode.InvalidKey, IdempotencyErrorCode.MissingKey];

  it.each(codes)('gives %s a message, a suggestion, the default docs_url and the right param', (code) => {
    const details = describeCode(code);
    expect(details.message.length).toBeGreaterThan(10);
    expect(details.suggestion.length).toBeGreaterThan(10);
    expect(details.docsUrl).toBe(`https://docs.patomic.dev/errors/${code.replace(/_/g, '-')}`);
    expect(details.param).toBe(withParam.includes(code) ? 'Idempotency-Key' : null);
  });

  it.each(codes)('writes the message and suggestion of %s as whole sentences', (code) => {
    const { message, suggestion } = describeCode(code);
    for (const sentence of [message, suggestion]) expect(sentence).toMatch(/^[A-Z].*\.$/);
  });

  it.each(Object.values(IdempotencyErrorCode))('gives %s a short title', (code) => {
    const { title } = describeError(code, { requestId: null, docsUrl: defaultDocsUrl });
    expect(title.length).toBeGreaterThan(5);
    expect(title.length).toBeLessThan(60);
  });

  it('marks as retryable exactly the errors a retry with the same key can get past', () => {
    const retryable = Object.values(IdempotencyErrorCode).filter(
      (code) => describeError(code, { requestId: null, docsUrl: defaultDocsUrl }).retryable,
    );
    expect(retryable.sort()).toEqual([
      'idempotency_key_in_use',
      'idempotency_store_unavailable',
      'transaction_conflict',
    ]);
  });

  it('names the configured header in the key errors, as their param and in their words', () => {
    for (const code of ['invalid_idempotency_key', 'missing_idempotency_key'] as const) {
      const details = describeError(code, { requestId: null, docsUrl: defaultDocsUrl, header: 'X-Request-Key' });
      expect(details.param).toBe('X-Request-Key');
      expect(`${details.title} ${details.message} ${details.suggestion}`).not.toContain('Idempotency-Key');
      expect(details.message).toContain('X-Request-Key');
    }
  });
});
