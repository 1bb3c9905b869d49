import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { fingerprintRequest, type FingerprintInput } from './fingerprint';

const base: FingerprintInput = {
  method: 'POST',
  url: '/v1/keys',
  hasBody: true,
  body: { a: 1, b: [1, { c: 2, d: null }] },
};

/** The fingerprint of a body whose canonical text, after method and URL, is `text`. */
const digestOf = (text: string) => createHash('sha256').update(`POST\n/v1/keys\n${text}`).digest('hex');

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
    const empty = fingerprintRequest({ ...base, body: {} });
    expect(fingerprintRequest({ ...base, hasBody: false, body: {} })).not.toBe(empty);
  });

  it('tells requests without a body apart by their method and URL', () => {
    const bodiless = (change: Partial<FingerprintInput>) => fingerprintRequest({ ...base, hasBody: false, ...change });
    expect(bodiless({ method: 'DELETE' })).toBe(bodiless({ method: 'DELETE' }));
    expect(bodiless({ method: 'DELETE' })).not.toBe(bodiless({ method: 'POST' }));
    expect(bodiless({ url: '/v1/keys/1' })).not.toBe(bodiless({ url: '/v1/keys/2' }));
  });

  it('hashes raw bodies byte for byte, whether Buffer, Uint8Array or text', () => {
    const raw = (body: unknown) => fingerprintRequest({ ...base, body });
    expect(raw(Buffer.from('abc'))).toBe(raw('abc'));
    expect(raw(new Uint8Array([0x61, 0x62, 0x63]))).toBe(raw('abc'));
    expect(raw(Buffer.from('abc'))).not.toBe(raw(Buffer.from('abd')));
  });

  it('gives a body no parser read a fingerprint of its own each time, as it cannot be compared', () => {
    const unread = () => fingerprintRequest({ ...base, body: undefined });
    expect(unread()).toMatch(/^[0-9a-f]{64}$/);
    expect(unread()).not.toBe(unread());
  });

  // Records outlive deploys: a retry sent across one must get the same fingerprint.
  it.each([
    [base.body, '{"a":1,"b":[1,{"c":2,"d":null}]}'],
    // Keys in code-unit order ("10" before "2"), escapes as JSON.stringify writes them, empty containers.
    [
      { é: ['a"b', { y: null, x: [[], {}] }], 2: -0.5, 10: true },
      '{"10":true,"2":-0.5,"é":["a\\"b",{"x":[[],{}],"y":null}]}',
    ],
    [[{}, [[]], 'x'], '[{},[[]],"x"]'],
  ])('keeps its canonical form: sorted keys, no whitespace, hashed after method and URL (%j)', (body, text) => {
    expect(fingerprintRequest({ ...base, body })).toBe(digestOf(`json:${text}`));
  });

  it('hashes a body of several hash pieces the same as in one piece', () => {
    const long = 'é'.repeat(100_000);
    const body = { z: long, a: [long, 'x'] };
    const canonical = `json:{"a":[${JSON.stringify(long)},"x"],"z":${JSON.stringify(long)}}`;
    expect(fingerprintRequest({ ...base, body })).toBe(digestOf(canonical));
  });

  it('survives a body nested 100,000 levels deep, hashing its canonical text', () => {
    const depth = 100_000;
    const canonical = `json:${'['.repeat(depth)}1${']'.repeat(depth)}`;
    expect(fingerprintRequest({ ...base, body: nested(1, depth) })).toBe(digestOf(canonical));
  });

  it('hashes the same object met twice side by side, deep down, as two copies: only a cycle is unreadable', () => {
    const shared = nested({ a: 1 }, 3);
    const twice = { ...base, body: nested([shared, shared], 100) };
    const copies = { ...base, body: nested([nested({ a: 1 }, 3), nested({ a: 1 }, 3)], 100) };
    expect(fingerprintRequest(twice)).toBe(fingerprintRequest(copies));
  });
});

/** `value` wrapped in `depth` arrays. */
function nested(value: unknown, depth: number): unknown {
  let body = value;
  for (let i = 0; i < depth; i++) body = [body];
  return body;
}

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
      [undefined],
      [null],
      { value: 5 },
      { a: 1 },
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

  // Each value is written as its tagged form, which stored fingerprints were made of, as for JSON above.
  const mapText = 'Map([["b",1],[2,Set(["x"])]])';
  it.each<[string, unknown, string]>([
    ['values JSON lacks', [NaN, Infinity, -Infinity, undefined, 1n], '[NaN,Infinity,-Infinity,undefined,1n]'],
    ['undefined in an object', { b: undefined, a: [undefined] }, '{"a":[undefined],"b":undefined}'],
    ['a Date: its class, then its toJSON()', new Date(0), 'Date("1970-01-01T00:00:00.000Z")'],
    ['a class with toJSON()', new Decimal('1.5'), 'Decimal("1.5")'],
    ['a Map and a Set: what they iterate', new Map<unknown, unknown>([['b', 1], [2, new Set(['x'])]]), mapText],
    ['a typed array', new Uint8Array([1, 2]), 'Uint8Array([1,2])'],
    ['a class instance: its own fields', new Amount(5), 'Amount({"value":5})'],
    ['an object of no class', Object.assign(Object.create(Object.create(null)), { b: 1, a: 2 }), '({"a":2,"b":1})'],
  ])('keeps the canonical form of %s', (_name, value, text) => {
    expect(of(value)).toBe(digestOf(`json:{"value":${text}}`));
  });

  it('hashes an object without a prototype, as a query-string parser yields, as the plain object it holds', () => {
    const parsed = Object.assign(Object.create(null), { b: ['1'], a: '2' });
    expect(of(parsed)).toBe(of({ a: '2', b: ['1'] }));
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
    for (const value of [new Unreadable(), cyclic, nested(cyclic, 100)]) {
      expect(of(value)).toMatch(/^[0-9a-f]{64}$/);
      expect(of(value)).not.toBe(of(value));
    }
  });
});
