import { IdempotencyConfigurationError, defaultDocsUrl, formatErrorEnvelope } from './idempotency.exceptions';
import { resolveOptions } from './idempotency-options';
import { bearerTokenScope } from './idempotency-scope';
import { formatProblemDetails } from './problem-details';

describe('resolveOptions', () => {
  it('applies the defaults', () => {
    expect(resolveOptions()).toMatchObject({
      ttl: 86_400_000,
      scope: bearerTokenScope,
      onUnresolvedScope: 'reject',
      conflictStatus: 409,
      maxResponseBytes: 1_048_576,
      expiresHeader: 'idempotency-expires-at',
      excludeHeaders: ['x-request-id'],
      errorFormat: 'patomic',
      header: 'Idempotency-Key',
      replayedHeader: 'idempotency-replayed',
      inFlight: 'reject',
      inFlightWait: 10_000,
      inFlightWaiters: 1000,
      formatError: formatErrorEnvelope,
      docsUrl: defaultDocsUrl,
      isolation: 'READ COMMITTED',
      purgeBatchSize: 1000,
      preparedStatements: true,
      storeTimeout: 5000,
      batchStatements: true,
    });
  });

  it('keeps what the host sets and takes the default for an option set to undefined', () => {
    const set = { maxResponseBytes: 10, onUnresolvedScope: 'bypass', expiresHeader: false } as const;
    expect(resolveOptions({ ttl: undefined, ...set })).toMatchObject({ ttl: 86_400_000, ...set });
  });

  it('lower-cases the excluded headers, as Node reports response header names in lower case', () => {
    expect(resolveOptions({ excludeHeaders: ['X-Trace-Id', 'etag'] }).excludeHeaders).toEqual(['x-trace-id', 'etag']);
  });

  it.each(['READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE'] as const)('accepts the isolation level %s', (level) => {
    expect(resolveOptions({ isolation: level }).isolation).toBe(level);
  });

  it('names the isolation levels when given another', () => {
    expect(() => resolveOptions({ isolation: 'READ UNCOMMITTED' as never })).toThrow(
      'option "isolation" must be one of READ COMMITTED, REPEATABLE READ, SERIALIZABLE; got READ UNCOMMITTED.',
    );
  });

  // ttl and lease are set throughout, the lease the shorter, so that only the option under test is wrong.
  const withOption = (name: string, value: number) => resolveOptions({ ttl: 60_000, lease: 1000, [name]: value });

  it.each(['lease', 'maxResponseBytes', 'purgeBatchSize'] as const)('accepts a %s of 1', (name) => {
    expect(withOption(name, 1)[name]).toBe(1);
  });

  describe.each(['ttl', 'lease', 'maxResponseBytes', 'purgeBatchSize'])('%s', (name) => {
    it.each([0, -1, 1.5, Number.NaN])('rejects %p as not a positive integer, with the fix', (value) => {
      expect(() => withOption(name, value)).toThrow(
        `IdempotencyModule option "${name}" must be a positive integer; got ${value}. Remove it to use the default.`,
      );
    });
  });

  it('requires the lease to be shorter than the ttl', () => {
    expect(resolveOptions({ ttl: 1001, lease: 1000 }).lease).toBe(1000);
    expect(() => resolveOptions({ ttl: 1000, lease: 1000 })).toThrow(/"lease" \(1000 ms\) must be shorter than "ttl"/);
  });

  it('accepts a purge interval of 0, which turns the purge off', () => {
    expect(resolveOptions({ purgeInterval: 0 }).purgeInterval).toBe(0);
  });

  it.each([-1, 1.5])('rejects the purge interval %p', (purgeInterval) => {
    expect(() => resolveOptions({ purgeInterval })).toThrow(/option "purgeInterval"/);
  });

  it('throws errors that say what they are', () => {
    const misconfigured = () => resolveOptions({ maxResponseBytes: 0 });
    expect(misconfigured).toThrow(IdempotencyConfigurationError);
    expect(misconfigured).toThrow(expect.objectContaining({ name: 'IdempotencyConfigurationError' }));
  });

  describe('errorFormat', () => {
    it("renders errors as problem details with 'problem+json'", () => {
      expect(resolveOptions({ errorFormat: 'problem+json' }).formatError).toBe(formatProblemDetails);
    });

    it('leaves the rendering to formatError whichever the format', () => {
      const formatError = () => 'mine';
      expect(resolveOptions({ errorFormat: 'problem+json', formatError }).formatError).toBe(formatError);
      expect(resolveOptions({ formatError }).formatError).toBe(formatError);
    });

    it('names the formats when given another', () => {
      expect(() => resolveOptions({ errorFormat: 'rfc7807' as never })).toThrow(
        'IdempotencyModule option "errorFormat" must be patomic or problem+json; got rfc7807.',
      );
    });
  });

  describe('header names', () => {
    it('keeps the names as written (the OpenAPI document shows them), and false for no replay marker', () => {
      const names = { header: 'X-Request-Key', replayedHeader: false } as const;
      expect(resolveOptions(names)).toMatchObject(names);
    });

    it.each([
      ['header', ''],
      ['header', 'Idempotency Key'],
      ['replayedHeader', 'replayed:'],
      ['replayedHeader', true],
    ])('refuses %s %p, which is no header name', (name, value) => {
      expect(() => resolveOptions({ [name]: value })).toThrow(`option "${name}" must be a header name`);
    });
  });

  describe('duplicates in flight', () => {
    it('holds them with inFlight: wait, as long and as many as set', () => {
      const wait = { inFlight: 'wait', inFlightWait: 500, inFlightWaiters: 2 } as const;
      expect(resolveOptions(wait)).toMatchObject(wait);
    });

    it.each([
      ['inFlight', 'hold', "'reject' or 'wait'"],
      ['inFlightWait', 0, 'a positive integer'],
      ['inFlightWaiters', 1.5, 'a positive integer'],
    ])('refuses %s %p, saying what it must be', (name, value, expected) => {
      expect(() => resolveOptions({ [name]: value })).toThrow(`option "${name}" must be ${expected}; got ${value}.`);
    });
  });
});
