import { readRequestKey } from './request-key';

const lines = (...values: string[]) => values.flatMap((value) => ['Idempotency-Key', value]);

describe('readRequestKey', () => {
  it('finds the header whatever its case', () => {
    expect(readRequestKey(['idempotency-KEY', 'abc'])).toEqual({ kind: 'valid', key: 'abc' });
  });

  it('is absent when no line carries it', () => {
    expect(readRequestKey(['Content-Type', 'application/json'])).toEqual({ kind: 'absent' });
  });

  it('reads no other header, even one with a name as long', () => {
    expect(readRequestKey(['Accept-Language', 'en', ...lines('abc')])).toEqual({ kind: 'valid', key: 'abc' });
  });

  it.each([
    ['empty', ''],
    ['only spaces', '   '],
    ['256 characters', 'a'.repeat(256)],
    ['non-ASCII', 'clé'],
    ['a control character', 'a\x01b'],
    ['empty quotes', '""'],
    ['a space in quotes', '" "'],
    ['a non-breaking space', '\u00a0'],
    ['a key ending in a non-breaking space', 'key\u00a0'],
  ])('rejects a value that is %s', (_name, value) => {
    expect(readRequestKey(lines(value))).toEqual({ kind: 'invalid' });
  });

  it('rejects two header lines, even with the same value', () => {
    expect(readRequestKey(lines('abc', 'abc'))).toEqual({ kind: 'invalid' });
  });

  it('keeps ", " inside one line as part of a single key', () => {
    expect(readRequestKey(lines('a, b'))).toEqual({ kind: 'valid', key: 'a, b' });
  });

  it('treats a quoted value as the bare key and trims surrounding spaces', () => {
    expect(readRequestKey(lines(' "abc" '))).toEqual({ kind: 'valid', key: 'abc' });
  });

  it('trims runs of spaces and tabs', () => {
    expect(readRequestKey(lines(' \t abc\t  '))).toEqual({ kind: 'valid', key: 'abc' });
  });

  it.each(['"abc', 'abc"', '"'])('keeps the quote of %s, which has no partner', (key) => {
    expect(readRequestKey(lines(key))).toEqual({ kind: 'valid', key });
  });

  it('accepts 255 printable characters', () => {
    const key = '~'.repeat(254) + ' x'.slice(1);
    expect(readRequestKey(lines(key))).toEqual({ kind: 'valid', key });
  });

  describe('under another header name', () => {
    it('reads the named header whatever its case, and no longer Idempotency-Key', () => {
      expect(readRequestKey(['X-Request-KEY', 'abc'], 'x-request-key')).toEqual({ kind: 'valid', key: 'abc' });
      expect(readRequestKey(lines('abc'), 'x-request-key')).toEqual({ kind: 'absent' });
    });

    it('rejects the named header sent twice', () => {
      const twice = ['x-request-key', 'a', 'X-Request-Key', 'b'];
      expect(readRequestKey(twice, 'x-request-key')).toEqual({ kind: 'invalid' });
    });
  });
});
