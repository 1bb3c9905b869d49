import { createHash } from 'node:crypto';
import { fingerprintRequest, type FingerprintInput } from './fingerprint';

const base: FingerprintInput = { method: 'POST', url: '/v1/keys', hasBody: true, body: { a: 1, b: [1, { c: 2, d: null }] } };

describe('fingerprintRequest', () => {
  it('ignores the key order of JSON objects', () => {
    const reordered = { ...base, body: { b: [1, { d: null, c: 2 }], a: 1 } };
    expect(fingerprintRequest(reordered)).toBe(fingerprintRequest(base));
  });

  it.each([
    ['method', { method: 'PUT' }],
    ['path', { url: '/v1/other' }],
    ['query string', { url: '/v1/keys?x=1' }],
    ['array order', { body: { a: 1, b: [{ c: 2, d: null }, 1] } }],
    ['a value', { body: { a: 2, b: [1, { c: 2, d: null }] } }],
    ['no body at all', { hasBody: false, body: undefined }],
    ['an empty object', { body: {} }],
    ['a number turned string', { body: { a: '1', b: [1, { c: 2, d: null }] } }],
  ])('changes with the %s', (_name, change) => {
    expect(fingerprintRequest({ ...base, ...change })).not.toBe(fingerprintRequest(base));
  });

  it('tells no body from an empty JSON object', () => {
    expect(fingerprintRequest({ ...base, hasBody: false, body: {} })).not.toBe(fingerprintRequest({ ...base, body: {} }));
  });

  it('hashes raw bodies byte for byte', () => {
    const raw = (body: unknown) => fingerprintRequest({ ...base, body });
    expect(raw(Buffer.from('abc'))).toBe(raw('abc'));
    expect(raw(Buffer.from('abc'))).not.toBe(raw(Buffer.from('abd')));
  });

  // Records outlive deploys: a retry sent across one must get the same fingerprint.
  it.each([
    [base.body, '{"a":1,"b":[1,{"c":2,"d":null}]}'],
    // Keys in code-unit order ("10" before "2"), escapes as JSON.stringify writes them, empty containers.
    [{ é: ['a"b', { y: null, x: [[], {}] }], 2: -0.5, 10: true }, '{"10":true,"2":-0.5,"é":["a\\"b",{"x":[[],{}],"y":null}]}'],
    [[{}, [[]], 'x'], '[{},[[]],"x"]'],
  ])('keeps its canonical form: sorted keys, no whitespace, hashed after method and URL (%j)', (body, text) => {
    const canonical = `POST\n/v1/keys\njson:${text}`;
    expect(fingerprintRequest({ ...base, body })).toBe(createHash('sha256').update(canonical).digest('hex'));
  });

  it('hashes a body of several hash pieces the same as in one piece', () => {
    const long = 'é'.repeat(100_000);
    const body = { z: long, a: [long, 'x'] };
    const canonical = `POST\n/v1/keys\njson:{"a":[${JSON.stringify(long)},"x"],"z":${JSON.stringify(long)}}`;
    expect(fingerprintRequest({ ...base, body })).toBe(createHash('sha256').update(canonical).digest('hex'));
  });

  it('survives a body nested 100,000 levels deep', () => {
    let deep: unknown = 1;
    for (let i = 0; i < 100_000; i++) deep = [deep];
    expect(fingerprintRequest({ ...base, body: deep })).toMatch(/^[0-9a-f]{64}$/);
  });
});
