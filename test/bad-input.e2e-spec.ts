// Property-based tests (fast-check) of what clients get wrong: key values, repeated key headers,
// bodies and Authorization headers. Whatever the input, on Express and on Fastify:
//   - the answer is never a 5xx (client mistakes are 4xx: the module's own, or the platform's),
//   - the process keeps serving,
//   - a handler never runs for an invalid key (and nothing is stored for it),
//   - a valid request behaves as SPEC W2/W4/§2a say, and its retry is a byte-identical replay.
// Requests are written byte for byte on a socket (test/chaos/raw-http.ts): Node's own client
// refuses many of the header values these tests need to send.
import { Controller, Post } from '@nestjs/common';
import fc from 'fast-check';
import { createHash, randomUUID } from 'node:crypto';
import { Idempotent } from '../src';
import { rawRequest, type RawRequest, type RawResponse } from './chaos/raw-http';
import { PLATFORMS, Probe, bootFixture, type FixtureApp, type Platform } from './support/fixture-app';
import { scopeOf } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';

@Controller('sink')
class SinkController {
  constructor(private readonly probe: Probe) {}

  @Post() @Idempotent()
  leased() {
    return { n: this.probe.hit('run') };
  }

  @Post('tx') @Idempotent({ transactional: true })
  tx() {
    return { n: this.probe.hit('run') };
  }
}

/** Body size limits of the platforms' default parsers (Express body-parser 100 KiB, Fastify 1 MiB). */
const BODY_LIMIT: Record<Platform, number> = { express: 100 * 1024, fastify: 1024 * 1024 };

const ROUTES = ['/sink', '/sink/tx'] as const;

// ---- Arbitraries

const charFrom = (min: number, max: number) => fc.integer({ min, max }).map((code) => String.fromCharCode(code));
const printable = (maxLength: number, minLength = 0) => fc.string({ unit: charFrom(0x20, 0x7e), minLength, maxLength });
/** Header-value bytes a client could send: anything but CR and LF (those would end the header line). */
const lineSafe = (bytes: Uint8Array) => Buffer.from(bytes.filter((byte) => byte !== 0x0d && byte !== 0x0a));

/** Raw `Idempotency-Key` values: printable, around 255 characters, any Unicode (UTF-8), any bytes; with or without quotes and edge whitespace. */
const keyValue: fc.Arbitrary<Buffer> = fc
  .tuple(
    fc.oneof(
      { weight: 4, arbitrary: printable(40).map((text) => Buffer.from(text, 'latin1')) },
      { weight: 2, arbitrary: fc.integer({ min: 250, max: 260 }).chain((n) => printable(n, n)).map((text) => Buffer.from(text, 'latin1')) },
      { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }).map((text) => lineSafe(Buffer.from(text, 'utf8'))) },
      { weight: 2, arbitrary: fc.uint8Array({ maxLength: 40 }).map(lineSafe) },
      {
        weight: 1,
        // Edge cases: empty, only spaces, quotes alone, and a latin1 no-break space (0xA0: not
        // ASCII, not a space) at the ends.
        arbitrary: fc
          .constantFrom('', ' ', '   ', '""', '" "', '"', '"a"b"', "'a'", '\\"a\\"', '\u00a0', '\u00a0key', 'key\u00a0', '"\u00a0key"')
          .map((text) => Buffer.from(text, 'latin1')),
      },
    ),
    fc.constantFrom('', ' ', '  ', '\t', ' \t '),
    fc.boolean(),
    fc.constantFrom('', ' ', '\t'),
    fc.constantFrom('', ' ', '\t', ' \t'),
  )
  .map(([core, outer, quoted, inner, trailing]) => {
    const wrap = quoted ? [Buffer.from(`"${inner}`), core, Buffer.from(`${inner}"`)] : [core];
    return Buffer.concat([Buffer.from(outer), ...wrap, Buffer.from(trailing)]);
  });

/** Header names for the key in various casings. */
const keyHeaderName = fc.constantFrom('Idempotency-Key', 'idempotency-key', 'IDEMPOTENCY-KEY', 'IdEmPoTeNcY-kEy');

// ---- Oracles (from SPEC W2, W4 and §2a; not from the implementation)

/** Node's HTTP parser refuses control characters (other than HTAB) in header values with its own 400. */
const refusedByParser = (value: Buffer) => value.some((byte) => (byte < 0x20 && byte !== 0x09) || byte === 0x7f);

/** The value as the application sees it: bytes as latin1, leading and trailing SP/HTAB removed by the parser. */
const received = (value: Buffer) => value.toString('latin1').replace(/^[ \t]+|[ \t]+$/g, '');

/**
 * The keys SPEC W2/§2a allow this header value to stand for (null: invalid, 400). Leading and
 * trailing spaces are not part of the key; a double-quoted value is the bare key. Whether spaces
 * just inside the quotes belong to the key the spec leaves open, so both readings are accepted.
 */
function keyReadings(value: Buffer): (string | null)[] {
  const bare = received(value).replace(/^ +| +$/g, '');
  const readings = [bare];
  if (bare.length >= 2 && bare.startsWith('"') && bare.endsWith('"')) {
    const inner = bare.slice(1, -1);
    readings.splice(0, 1, inner, inner.replace(/^ +| +$/g, ''));
  }
  return [...new Set(readings)].map((key) => (key.length >= 1 && key.length <= 255 && /^[\x20-\x7e]+$/.test(key) && /[^ ]/.test(key) ? key : null));
}

describe.each(PLATFORMS)('Bad input never breaks the module (%s)', (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;
  const runs = () => app.probe.count('run');
  const storedKeys = async (token: string): Promise<string[]> =>
    (await app.dataSource.query('SELECT idem_key FROM idempotency_keys WHERE api_key_id = $1 ORDER BY idem_key', [scopeOf(token)])).map(
      (row: { idem_key: string }) => row.idem_key,
    );
  const send = (req: RawRequest): Promise<RawResponse> => rawRequest(app.url, req);
  const freshToken = () => `tok_${randomUUID()}`;

  beforeAll(async () => {
    database = await createTestDatabase();
    app = await bootFixture(database.url, { controllers: [SinkController], platform });
  });
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });
  afterEach(async () => {
    // The process still serves.
    const token = freshToken();
    const alive = await send({ path: '/sink', headers: [['Authorization', `Bearer ${token}`], ['Idempotency-Key', 'still-alive']] });
    expect(alive.status).toBe(201);
  });

  const expectNo5xx = (answer: RawResponse) => {
    expect(answer.error === undefined || answer.status > 0).toBe(true);
    expect(answer.status).toBeGreaterThan(0);
    expect(answer.status).toBeLessThan(500);
  };

  it('answers any key value as the spec says: 400 invalid_idempotency_key without running the handler, or 201 stored under the key', async () => {
    await fc.assert(
      fc.asyncProperty(keyValue, fc.constantFrom(...ROUTES), async (value, route) => {
        const token = freshToken();
        const before = runs();
        const answer = await send({ path: route, headers: [['Authorization', `Bearer ${token}`], ['Idempotency-Key', value]] });
        expectNo5xx(answer);
        if (refusedByParser(value)) {
          expect(answer.status).toBe(400);
          expect(runs()).toBe(before);
          expect(await storedKeys(token)).toEqual([]);
          return;
        }
        const readings = keyReadings(value);
        if (answer.status === 400) {
          expect(readings).toContain(null);
          expect(answer.json?.error).toMatchObject({ type: 'idempotency_error', code: 'invalid_idempotency_key', param: 'Idempotency-Key' });
          expect(runs()).toBe(before);
          expect(await storedKeys(token)).toEqual([]);
          return;
        }
        expect(answer.status).toBe(201);
        expect(runs()).toBe(before + 1);
        const stored = await storedKeys(token);
        expect(stored).toHaveLength(1);
        expect(readings).toContain(stored[0]);
        // The retry is a replay, byte for byte; so is the bare key (when it can be sent bare:
        // spaces at its ends would be stripped, quotes around it taken off).
        const sendableBare = !/^ | $/.test(stored[0]) && !/^".*"$/s.test(stored[0]);
        const retries = [value, ...(sendableBare ? [Buffer.from(stored[0], 'latin1')] : [])];
        for (const again of retries) {
          const retry = await send({ path: route, headers: [['Authorization', `Bearer ${token}`], ['Idempotency-Key', again]] });
          expect(retry.status).toBe(201);
          expect(retry.headers['idempotency-replayed']).toEqual(['true']);
          expect(retry.body.equals(answer.body)).toBe(true);
        }
        expect(runs()).toBe(before + 1);
      }),
      // Always tried first: a latin1 no-break space (0xA0) is neither ASCII nor a space.
      { numRuns: 150, examples: [[Buffer.from('key\u00a0', 'latin1'), '/sink']] },
    );
  });

  it('treats two or more Idempotency-Key lines as invalid whatever their values and casing, one line by its value, none as a plain request', async () => {
    const validKey = printable(30, 1).filter((key) => key.trim().length > 0 && !key.startsWith(' ') && !key.endsWith(' '));
    const anyValue = fc.oneof(validKey.map((key) => Buffer.from(key)), keyValue);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(keyHeaderName, anyValue), { maxLength: 4 }),
        fc.boolean(),
        fc.constantFrom(...ROUTES),
        async (lines, sameValue, route) => {
          const keyLines: [string, Buffer][] = sameValue && lines.length > 1 ? lines.map(([name]) => [name, lines[0][1]]) : lines;
          if (keyLines.some(([, value]) => refusedByParser(value))) return;
          const token = freshToken();
          const before = runs();
          // Other headers between the key lines must not matter.
          const headers: [string, string | Buffer][] = [['Authorization', `Bearer ${token}`]];
          for (const line of keyLines) headers.push(line, ['X-Filler', 'x']);
          const answer = await send({ path: route, headers });
          expectNo5xx(answer);
          if (keyLines.length >= 2) {
            expect(answer.status).toBe(400);
            expect(answer.json?.error?.code).toBe('invalid_idempotency_key');
            expect(runs()).toBe(before);
            expect(await storedKeys(token)).toEqual([]);
          } else if (keyLines.length === 0) {
            expect(answer.status).toBe(201);
            expect(runs()).toBe(before + 1);
            expect(await storedKeys(token)).toEqual([]);
          } else {
            const readings = keyReadings(keyLines[0][1]);
            if (answer.status === 400) {
              expect(readings).toContain(null);
              expect(runs()).toBe(before);
            } else {
              expect(answer.status).toBe(201);
              expect(readings).toContain((await storedKeys(token))[0]);
            }
          }
        },
      ),
      { numRuns: 120 },
    );
  });

  it('never answers 5xx to a body (JSON of any shape, deeply nested, invalid, binary of any content type, near and past the size limit); a 2xx is stored and replayed byte for byte, anything else runs nothing', async () => {
    const limit = BODY_LIMIT[platform];
    const contentType = fc.constantFrom(
      'application/json',
      'application/json; charset=utf-8',
      'application/json; charset=utf-16',
      'text/plain',
      'text/plain; charset=latin1',
      'application/octet-stream',
      'image/png',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=xyz',
      'application/vnd.api+json',
      ';;;',
      'application/json; charset=',
    );
    const nested = (depth: number, kind: 'array' | 'object') =>
      kind === 'array' ? `${'['.repeat(depth)}${']'.repeat(depth)}` : `${'{"a":'.repeat(depth)}0${'}'.repeat(depth)}`;
    const sized = (size: number) => `{"pad":"${'x'.repeat(Math.max(0, size - 10))}"}`;
    const body = fc.oneof(
      { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((value) => ({ type: 'application/json', bytes: Buffer.from(JSON.stringify(value) ?? 'null') })) },
      {
        weight: 2,
        arbitrary: fc
          .tuple(fc.integer({ min: 1, max: 30_000 }), fc.constantFrom('array' as const, 'object' as const))
          .map(([depth, kind]) => ({ type: 'application/json', bytes: Buffer.from(nested(depth, kind)) })),
      },
      {
        weight: 2,
        arbitrary: fc
          .oneof(fc.string({ maxLength: 200 }), fc.constantFrom('{', '{"a":}', '[1,]', 'nul', '{"a":1}}', '\u0000', '"\\u12"', '{"__proto__":{"x":1}}'))
          .map((text) => ({ type: 'application/json', bytes: Buffer.from(text) })),
      },
      { weight: 3, arbitrary: fc.tuple(contentType, fc.uint8Array({ maxLength: 4096 })).map(([type, bytes]) => ({ type, bytes: Buffer.from(bytes) })) },
      {
        weight: 1,
        arbitrary: fc
          .constantFrom(limit - 64, limit - 1, limit, limit + 1, limit + 64, 2 * limit, 5 * 1024 * 1024)
          .map((size) => ({ type: 'application/json', bytes: Buffer.from(sized(size)) })),
      },
    );
    await fc.assert(
      fc.asyncProperty(body, fc.constantFrom(...ROUTES), async ({ type, bytes }, route) => {
        const token = freshToken();
        const key = randomUUID();
        const request: RawRequest = { path: route, headers: [['Authorization', `Bearer ${token}`], ['Idempotency-Key', key], ['Content-Type', type]], body: bytes };
        const before = runs();
        const answer = await send(request);
        expectNo5xx(answer);
        if (answer.status >= 300) {
          expect(runs()).toBe(before);
          expect(await storedKeys(token)).toEqual([]);
          return;
        }
        expect(runs()).toBe(before + 1);
        const retry = await send(request);
        expect(runs()).toBe(before + 1);
        // A body no parser read (Express, a content type it has no parser for) cannot be proven the
        // same request: its retry is a conflict, never a replay of something else.
        if (retry.status === 409 && platform === 'express') {
          expect(JSON.parse(retry.body.toString()).error.code).toBe('idempotency_key_conflict');
          return;
        }
        expect(retry.status).toBe(answer.status);
        expect(retry.headers['idempotency-replayed']).toEqual(['true']);
        expect(retry.body.equals(answer.body)).toBe(true);
      }),
      { numRuns: 100 },
    );
  });

  it('never answers 5xx to an Authorization header (any scheme, casing, spacing, bytes, length, repeated); 401 runs nothing, a resolved scope never stores the token and is its own', async () => {
    const scheme = fc.constantFrom('Bearer', 'bearer', 'BEARER', 'bEaReR', 'Basic', 'Token', 'Bearerx', 'Bearer:', '');
    const separator = fc.constantFrom(' ', '  ', '\t', ' \t', '', ':');
    const token = fc.oneof(
      { weight: 4, arbitrary: printable(60) },
      { weight: 2, arbitrary: fc.uint8Array({ maxLength: 60 }).map((bytes) => lineSafe(bytes).toString('latin1')) },
      { weight: 1, arbitrary: fc.constantFrom('', ' ', '\t', 'a b', 'tok,tok', '"quoted"', '\u00a0', '\u00a0secret', 'secret\u00a0') },
      { weight: 1, arbitrary: fc.integer({ min: 1000, max: 7000 }).chain((n) => printable(n, n)) },
    );
    const line = fc.oneof(
      { weight: 5, arbitrary: fc.tuple(scheme, separator, token).map(([s, sep, t]) => Buffer.from(`${s}${sep}${t}`, 'latin1')) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 80 }).map(lineSafe) },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(line, { maxLength: 3 }), fc.constantFrom(...ROUTES), async (authorization, route) => {
        if (authorization.some(refusedByParser)) return;
        const key = randomUUID();
        const request: RawRequest = { path: route, headers: [...authorization.map((value): [string, Buffer] => ['Authorization', value]), ['Idempotency-Key', key]] };
        const before = runs();
        const answer = await send(request);
        expectNo5xx(answer);
        const rows = async () => app.dataSource.query('SELECT api_key_id, t::text AS all_columns FROM idempotency_keys t WHERE idem_key = $1', [key]);

        // SPEC W4/§2a: the first Authorization line counts (Node keeps the first of repeated ones);
        // the Bearer scheme case-insensitively, then a non-empty token.
        const first = authorization.length > 0 ? received(authorization[0]) : '';
        const bearer = /^bearer[ \t]+(.*)$/i.exec(first);
        const rawToken = bearer ? bearer[1].replace(/^[ \t]+|[ \t]+$/g, '') : '';
        const resolved = rawToken.length > 0;

        if (answer.status === 401) {
          expect({ token: rawToken, resolved }).toEqual({ token: rawToken, resolved: false });
          expect(answer.json?.error?.code).toBe('idempotency_scope_unresolved');
          expect(runs()).toBe(before);
          expect(await rows()).toEqual([]);
          return;
        }
        expect(answer.status).toBe(201);
        expect(resolved).toBe(true);
        expect(runs()).toBe(before + 1);
        const [row] = await rows();
        // §2a: stored unchanged as the SHA-256 hex of the token (the token, not a trimmed variant
        // of it: two different tokens must never share a scope).
        expect({ token: rawToken, scope: row.api_key_id }).toEqual({ token: rawToken, scope: createHash('sha256').update(rawToken).digest('hex') });
        if (rawToken.length >= 8) expect(row.all_columns.includes(rawToken)).toBe(false);
        // The same caller gets the replay; another caller with the same key is a different scope.
        const retry = await send(request);
        expect(retry.headers['idempotency-replayed']).toEqual(['true']);
        expect(retry.body.equals(answer.body)).toBe(true);
        const other = await send({ path: route, headers: [['Authorization', `Bearer other-${createHash('sha256').update(first).digest('hex')}`], ['Idempotency-Key', key]] });
        expect(other.status).toBe(201);
        expect(other.headers['idempotency-replayed']).toBeUndefined();
        expect(runs()).toBe(before + 2);
      }),
      // Always tried first: tokens that differ only by a latin1 no-break space at an end.
      { numRuns: 120, examples: [[[Buffer.from('Bearer \u00a0secret', 'latin1')], '/sink']] },
    );
  });
});
