import { randomBytes } from 'node:crypto';
import { IdempotencyConfigurationError } from '../idempotency.exceptions';
import { resolveOptions } from '../idempotency-options';
import type { RecordEncryptionOptions } from './encryption-options';

// The encryption option is checked at bootstrap, and each refusal says how to fix it.
describe('encryption option', () => {
  const secret = () => randomBytes(32);

  it('is off unless set: nothing is resolved for it', () => {
    expect(resolveOptions({}).encryption).toBeUndefined();
  });

  it('takes secrets as Buffers or base64; the first key seals, every key opens', () => {
    const second = randomBytes(32);
    const { encryption } = resolveOptions({ encryption: { keys: [{ id: 'k2', secret: second.toString('base64') }, { id: 'k1', secret: secret() }] } });
    expect(encryption?.sealingKey.id).toBe('k2');
    expect(encryption?.sealingKey.secret.equals(second)).toBe(true);
    expect([...(encryption?.keys.keys() ?? [])]).toEqual(['k2', 'k1']);
    expect(encryption?.callerSecret).toBeUndefined();
  });

  it('keeps its own copy of each secret: zeroing the Buffer given does not change the ring', () => {
    const given = secret();
    const copy = Buffer.from(given);
    const { encryption } = resolveOptions({ encryption: { keys: [{ id: 'k1', secret: given }] } });
    given.fill(0);
    expect(encryption?.sealingKey.secret.equals(copy)).toBe(true);
  });

  it('binds records to the bearer token by default with bindToCaller, or to what callerSecret returns', () => {
    const bound = resolveOptions({ encryption: { keys: [{ id: 'k1', secret: secret() }], bindToCaller: true } }).encryption;
    expect(bound?.callerSecret?.({ headers: { authorization: 'Bearer tok_1' } })).toBe('tok_1');
    const own = (request: { headers: Record<string, string> }) => request.headers['x-account-secret'];
    const custom = resolveOptions({ encryption: { keys: [{ id: 'k1', secret: secret() }], bindToCaller: true, callerSecret: own } }).encryption;
    expect(custom?.callerSecret).toBe(own);
  });

  it.each<[string, RecordEncryptionOptions, RegExp]>([
    ['no keys', { keys: [] }, /"encryption\.keys" lists no key; add \{ id, secret \} with 32 random bytes \(openssl rand -base64 32\)/],
    ['a secret of 16 bytes', { keys: [{ id: 'k1', secret: randomBytes(16) }] }, /secret of key "k1" is 16 bytes; it must be 32 random bytes/],
    ['a base64 secret of 31 bytes', { keys: [{ id: 'k1', secret: randomBytes(31).toString('base64') }] }, /secret of key "k1" is 31 bytes/],
    ['a secret that is not base64', { keys: [{ id: 'k1', secret: 'correct horse battery staple, really!!' }] }, /secret of key "k1" is not base64/],
    ['two keys with one id', { keys: [{ id: 'k1', secret: randomBytes(32) }, { id: 'k1', secret: randomBytes(32) }] }, /lists the key id "k1" twice; give each key its own id/],
    ['an empty id', { keys: [{ id: '', secret: randomBytes(32) }] }, /key id must be 1-64 printable ASCII characters without spaces; got ""/],
    ['an id with a space', { keys: [{ id: 'key one', secret: randomBytes(32) }] }, /got "key one"/],
    ['callerSecret without bindToCaller', { keys: [{ id: 'k1', secret: randomBytes(32) }], callerSecret: () => 'x' }, /"encryption\.callerSecret" is only used with bindToCaller: true/],
  ])('refuses %s, saying how to fix it', (_name, encryption, message) => {
    const resolve = () => resolveOptions({ encryption });
    expect(resolve).toThrow(IdempotencyConfigurationError);
    expect(resolve).toThrow(message);
  });
});
