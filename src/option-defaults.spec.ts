import { IdempotencyConfigurationError } from './idempotency.exceptions';
import { resolveOptions } from './idempotency-options';

// A default never conflicts with an option the user set, and an option that cannot work is
// refused at bootstrap with how to fix it.
describe('resolveOptions defaults and limits', () => {
  it.each([
    [{}, 30_000],
    [{ ttl: 3000 }, 1500],
    [{ ttl: 60_001 }, 30_000],
    [{ ttl: 3 }, 1],
    [{ ttl: 2 }, 1],
    [{ ttl: 3000, lease: 100 }, 100],
  ])('gives %j a lease of %i ms: 30 s, or half a shorter TTL rounded down, unless set', (options, lease) => {
    expect(resolveOptions(options).lease).toBe(lease);
  });

  it('still refuses a lease set as long as the TTL, saying how to fix it', () => {
    const resolve = () => resolveOptions({ ttl: 3000, lease: 3000 });
    expect(resolve).toThrow(IdempotencyConfigurationError);
    expect(resolve).toThrow(/"lease" \(3000 ms\) must be shorter than "ttl" \(3000 ms\); lower the lease/);
  });

  it('refuses a TTL too short to leave room for a lease, naming the TTL and the fix', () => {
    const resolve = () => resolveOptions({ ttl: 1 });
    expect(resolve).toThrow(IdempotencyConfigurationError);
    expect(resolve).toThrow(/option "ttl" \(1 ms\) leaves no room for a lease, which must be shorter; raise the ttl\./);
  });

  it('accepts the longest purge interval a timer can wait, and refuses a longer one, saying how to fix it', () => {
    const longest = 2 ** 31 - 1;
    expect(resolveOptions({ purgeInterval: longest }).purgeInterval).toBe(longest);
    const resolve = () => resolveOptions({ purgeInterval: longest + 1 });
    expect(resolve).toThrow(IdempotencyConfigurationError);
    expect(resolve).toThrow('option "purgeInterval" must be at most 2147483647 ms (about 24.8 days), the longest');
    expect(resolve).toThrow('got 2147483648. Lower it, or set 0 and call IdempotencyService.purgeExpired()');
  });
});
