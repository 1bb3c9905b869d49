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
});
