import { randomBytes } from 'node:crypto';
import { IdempotencyConfigurationError } from '../idempotency.exceptions';
import { resolveOptions } from '../idempotency-options';
import type { RecordEncryptionKey, RecordEncryptionOptions } from './encryption-options';

// The encryption option is checked at bootstrap, and each refusal says how to fix it.
describe('encryption option', () => {
  const secret = () => randomBytes(32);
  /** The encryption resolved for these keys, with the other encryption options given. */
  const withKeys = (keys: unknown[], rest: Partial<RecordEncryptionOptions> = {}) =>
    resolveOptions({ encryption: { keys: keys as RecordEncryptionKey[], ...rest } }).encryption;
  /** A key of the ring: id k1 and a fresh secret unless given. */
  const key = (id: unknown = 'k1', keySecret: unknown = secret()) => ({ id, secret: keySecret });

  it('is off unless set: nothing is resolved for it', () => {
    expect(resolveOptions({}).encryption).toBeUndefined();
  });

  it('takes secrets as Buffers or base64; the first key seals, every key opens', () => {
    const second = secret();
    const encryption = withKeys([key('k2', second.toString('base64')), key('k1')]);
    expect(encryption?.sealingKey.id).toBe('k2');
    expect(encryption?.sealingKey.secret.equals(second)).toBe(true);
    expect([...(encryption?.keys.keys() ?? [])]).toEqual(['k2', 'k1']);
    expect(encryption?.callerSecret).toBeUndefined();
  });

  it('keeps its own copy of each secret: zeroing the Buffer given does not change the ring', () => {
    const given = secret();
    const copy = Buffer.from(given);
    const encryption = withKeys([key('k1', given)]);
    given.fill(0);
    expect(encryption?.sealingKey.secret.equals(copy)).toBe(true);
  });

  it.each([
    ['base64url', (bytes: Buffer) => bytes.toString('base64url')],
    ['base64 on a line of its own, as read from a file', (bytes: Buffer) => `${bytes.toString('base64')}\n`],
    ['base64 padded twice', (bytes: Buffer) => `${bytes.toString('base64')}=`],
  ])('takes a secret in %s', (_form, encode) => {
    // 0xfb and 0xff give the characters that base64 and base64url write differently.
    const bytes = Buffer.from(Array.from({ length: 32 }, (_, i) => (i % 2 ? 0xfb : 0xff)));
    expect(withKeys([key('k1', encode(bytes))])?.sealingKey.secret.equals(bytes)).toBe(true);
  });

  it('takes key ids of 1 to 64 printable ASCII characters', () => {
    for (const id of ['!', '~', 'k'.repeat(64), '2025-01:key/1']) {
      expect(withKeys([key(id)])?.sealingKey.id).toBe(id);
    }
  });

  it('binds records to the bearer token by default with bindToCaller, or to what callerSecret returns', () => {
    const bound = withKeys([key()], { bindToCaller: true });
    expect(bound?.callerSecret?.({ headers: { authorization: 'Bearer tok_1' } })).toBe('tok_1');
    const own = (request: { headers: Record<string, string> }) => request.headers['x-account-secret'];
    expect(withKeys([key()], { bindToCaller: true, callerSecret: own })?.callerSecret).toBe(own);
  });

  const fix = /add \{ id, secret \} with 32 random bytes \(openssl rand -base64 32\)/;
  const idRule = /a key id must be 1-64 printable ASCII characters without spaces/;
  const bindFirst = /"encryption\.callerSecret" is only used with bindToCaller: true; set bindToCaller: true/;
  const got = (rule: RegExp, text: string) => new RegExp(`${rule.source}; got ${text}`);
  it.each<[string, () => unknown, RegExp]>([
    ['no keys', () => withKeys([]), new RegExp(`"encryption\\.keys" lists no key; ${fix.source}`)],
    ['keys given as one key, not a list', () => resolveOptions({ encryption: { keys: key() } as never }), fix],
    ['a secret of 16 bytes', () => withKeys([key('k1', randomBytes(16))]), /"k1" is 16 bytes; it must be 32 random/],
    ['a base64 secret of 31 bytes', () => withKeys([key('k1', randomBytes(31).toString('base64'))]), /is 31 bytes/],
    ['a secret that is not base64', () => withKeys([key('k1', 'correct horse battery staple!!')]), /not base64/],
    ['a key without a secret', () => withKeys([{ id: 'k1' }]), /secret of key "k1" is not base64; give a Buffer/],
    ['two keys with one id', () => withKeys([key(), key()]), /lists the key id "k1" twice; give each key its own id/],
    ['an empty id', () => withKeys([key('')]), got(idRule, '""')],
    ['an id with a space', () => withKeys([key('key one')]), got(idRule, '"key one"')],
    ['an id of 65 characters', () => withKeys([key('k'.repeat(65))]), idRule],
    ['an id that is a number', () => withKeys([key(7)]), got(idRule, '7\\.')],
    ['callerSecret without bindToCaller', () => withKeys([key()], { callerSecret: () => 'x' }), bindFirst],
  ])('refuses %s, saying how to fix it', (_name, resolve, message) => {
    expect(resolve).toThrow(IdempotencyConfigurationError);
    expect(resolve).toThrow(message);
  });
});
