import { IdempotencyErrorCode, defaultDocsUrl, describeError } from './idempotency.exceptions';

describe('describeError', () => {
  it.each(Object.values(IdempotencyErrorCode))('gives %s a message, a suggestion, the default docs_url and the right param', (code) => {
    const details = describeError(code, { requestId: null, docsUrl: defaultDocsUrl });
    expect(details.message.length).toBeGreaterThan(10);
    expect(details.suggestion.length).toBeGreaterThan(10);
    expect(details.docsUrl).toBe(`https://docs.patomic.dev/errors/${code.replace(/_/g, '-')}`);
    expect(details.param).toBe(code === 'invalid_idempotency_key' || code === 'missing_idempotency_key' ? 'Idempotency-Key' : null);
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
