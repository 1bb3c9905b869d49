import fc from 'fast-check';
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

/** Stands for a class instance a lenient parser may yield (a decimal, a money amount). */
class Amount {
  constructor(readonly value: number) {}
}

/** Stands for a value class that says how it is written as JSON. */
class Decimal {
  constructor(private readonly digits: string) {}
  toJSON() {
    return this.digits;
  }
}

/** Stands for a value that fails as it is read. */
class Unreadable {
  toJSON(): never {
    throw new Error('unreadable');
  }
}

describe('fingerprintRequest of values beyond JSON (as lenient parsers yield)', () => {
  const of = (value: unknown) => fingerprintRequest({ ...base, body: { value } });

  it('gives each value its own fingerprint, never that of the JSON value it would be written as', () => {
    const values = [
      null,
      undefined,
      0,
      1,
      '1',
      Infinity,
      -Infinity,
      NaN,
      1n,
      2n,
      new Date(0),
      new Date(1),
      new Date(0).toISOString(),
      new Date(NaN),
      {},
      [],
      { value: 5 },
      new Amount(5),
      new Amount(6),
      new Decimal('1.5'),
      new Decimal('2.5'),
      new Map([['a', 1]]),
      new Map([['a', 2]]),
      [['a', 1]],
      new Set([1]),
      new Set([2]),
      [1],
      new Uint8Array([1]),
      { 0: 1 },
    ];
    const fingerprints = values.map(of);
    expect(new Set(fingerprints).size).toBe(values.length);
  });

  it('gives the same value the same fingerprint every time', () => {
    const body = () => ({
      at: new Date(0),
      n: 10n,
      tags: new Set(['a']),
      map: new Map([[1, new Amount(1)]]),
      price: new Decimal('1.5'),
      bytes: new Uint8Array([1, 2]),
    });
    expect(of(body())).toBe(of(body()));
  });

  it('never throws, whatever a parsed body holds, and is stable for a value read twice', () => {
    const beyondJson = { withBigInt: true, withDate: true, withMap: true, withSet: true, withTypedArray: true };
    const parsed = fc
      .anything({ ...beyondJson, withNullPrototype: true })
      // undefined is the body no parser read: its fingerprint is its own by design.
      .filter((body) => body !== undefined);
    fc.assert(
      fc.property(parsed, (body) => {
        const fingerprint = fingerprintRequest({ ...base, body });
        expect(fingerprint).toMatch(/^[0-9a-f]{64}$/);
        expect(fingerprintRequest({ ...base, body })).toBe(fingerprint);
      }),
      { numRuns: 500 },
    );
  });

  it('gives a body it cannot read a fingerprint of its own (a conflict on retry), instead of throwing', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    for (const value of [new Unreadable(), cyclic]) {
      expect(of(value)).toMatch(/^[0-9a-f]{64}$/);
      expect(of(value)).not.toBe(of(value));
    }
  });
});
