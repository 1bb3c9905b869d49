import { randomUUID } from 'node:crypto';
import { createTestDatabase } from './support/test-database';
import { PLATFORMS, startFixtureApp, type FixtureApp } from './support/fixture-app';
import { authed, scopeOf, send, type WireResponse } from './support/http-client';
import { waitFor } from './support/wait-for';

// Wire behaviour W1–W8, W11 and the details of SPEC §2a, on one fixture app.
describe.each(PLATFORMS)('Idempotency-Key on the wire (%s)', (platform) => {
  let database: Awaited<ReturnType<typeof createTestDatabase>>;
  let fixture: FixtureApp;
  let token: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    fixture = await startFixtureApp(database.url, {}, platform);
  });
  afterAll(async () => {
    await fixture?.close();
    await database?.drop();
  });
  beforeEach(() => {
    token = `tok_${randomUUID()}`;
  });
  // A test that failed while a handler waited on a gate must not leave it hanging into app.close().
  afterEach(() => fixture?.probe.openAll());

  const post = (path: string, key?: string, body?: unknown, extra: [string, string][] = []) =>
    send(fixture.url, { path, headers: authed(token, key, extra), body });
  const recordCount = async (scope = scopeOf(token)) =>
    Number((await fixture.dataSource.query('SELECT count(*) AS n FROM idempotency_keys WHERE api_key_id = $1', [scope]))[0].n);
  const errorOf = (response: WireResponse) => response.json?.error;

  describe('W1: which requests are idempotent', () => {
    it('matches the header name case-insensitively', async () => {
      const key = randomUUID();
      const first = await send(fixture.url, { path: '/things', headers: [['Authorization', `Bearer ${token}`], ['IDEMPOTENCY-KEY', key]], body: { a: 1 } });
      const second = await send(fixture.url, { path: '/things', headers: [['authorization', `Bearer ${token}`], ['idempotency-key', key]], body: { a: 1 } });
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body).toEqual(first.body);
    });

    it('ignores the key on a GET of an idempotent controller: the handler runs every time', async () => {
      const key = randomUUID();
      const before = fixture.probe.count('whole-get');
      const first = await send(fixture.url, { method: 'GET', path: '/whole', headers: authed(token, key) });
      const second = await send(fixture.url, { method: 'GET', path: '/whole', headers: authed(token, key) });
      expect([first.status, second.status]).toEqual([200, 200]);
      expect(second.headers['idempotency-replayed']).toBeUndefined();
      expect(fixture.probe.count('whole-get')).toBe(before + 2);
    });

    it('ignores the key on a route that is not marked', async () => {
      const key = randomUUID();
      const before = fixture.probe.count('plain');
      await post('/plain', key);
      const second = await post('/plain', key);
      expect(second.headers['idempotency-replayed']).toBeUndefined();
      expect(fixture.probe.count('plain')).toBe(before + 2);
      expect(await recordCount()).toBe(0);
    });

    it('applies a controller-level @Idempotent() to its POST', async () => {
      const key = randomUUID();
      const first = await post('/whole', key);
      const second = await post('/whole', key);
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body).toEqual(first.body);
    });

    it('honours PUT', async () => {
      const key = randomUUID();
      const first = await send(fixture.url, { method: 'PUT', path: '/things/7', headers: authed(token, key), body: { v: 1 } });
      const second = await send(fixture.url, { method: 'PUT', path: '/things/7', headers: authed(token, key), body: { v: 1 } });
      expect(first.status).toBe(200);
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body).toEqual(first.body);
    });
  });

  describe('W2: key validation', () => {
    it.each([
      ['empty', ''],
      ['only spaces', '    '],
      ['256 characters long', 'k'.repeat(256)],
      ['non-ASCII', 'clé-1'],
    ])('answers 400 invalid_idempotency_key to a key that is %s, runs nothing and stores nothing', async (_name, key) => {
      const before = fixture.probe.count('create');
      const response = await post('/things', key, { a: 1 });
      expect(response.status).toBe(400);
      expect(errorOf(response)).toMatchObject({ code: 'invalid_idempotency_key', param: 'Idempotency-Key' });
      expect(fixture.probe.count('create')).toBe(before);
      expect(await recordCount()).toBe(0);
    });

    it('answers 400 when the header is sent twice, even with one value', async () => {
      const before = fixture.probe.count('create');
      const response = await post('/things', undefined, { a: 1 }, [['Idempotency-Key', 'same'], ['Idempotency-Key', 'same']]);
      expect(response.status).toBe(400);
      expect(errorOf(response).code).toBe('invalid_idempotency_key');
      expect(fixture.probe.count('create')).toBe(before);
    });

    it('accepts 255 characters', async () => {
      const response = await post('/things', 'k'.repeat(255), { a: 1 });
      expect(response.status).toBe(201);
    });

    it('treats a double-quoted value as the bare key', async () => {
      const key = randomUUID();
      const first = await post('/things', `"${key}"`, { a: 1 });
      const second = await post('/things', key, { a: 1 });
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body).toEqual(first.body);
    });
  });

  describe('W3: requests without a key', () => {
    it('runs normally and stores nothing', async () => {
      const before = fixture.probe.count('create');
      const first = await post('/things', undefined, { a: 1 });
      const second = await post('/things', undefined, { a: 1 });
      expect([first.status, second.status]).toEqual([201, 201]);
      expect(fixture.probe.count('create')).toBe(before + 2);
      expect(await recordCount()).toBe(0);
    });

    it('answers 400 missing_idempotency_key where the route requires a key', async () => {
      const before = fixture.probe.count('required');
      const response = await post('/things/required');
      expect(response.status).toBe(400);
      expect(errorOf(response)).toMatchObject({ code: 'missing_idempotency_key', param: 'Idempotency-Key' });
      expect(fixture.probe.count('required')).toBe(before);
    });
  });

  describe('W4: scopes', () => {
    it('keeps two callers apart: the same key runs once for each', async () => {
      const key = randomUUID();
      const mine = await post('/things', key, { a: 1 });
      const theirs = await send(fixture.url, { path: '/things', headers: authed(`other_${randomUUID()}`, key), body: { a: 1 } });
      expect(theirs.status).toBe(201);
      expect(theirs.headers['idempotency-replayed']).toBeUndefined();
      expect(theirs.json.created).not.toBe(mine.json.created);
    });

    it('stores the SHA-256 hex of the bearer token, never the token', async () => {
      await post('/things', randomUUID(), { a: 1 });
      const rows = await fixture.dataSource.query(
        `SELECT api_key_id FROM idempotency_keys WHERE api_key_id = $1 OR position($2 in api_key_id || idem_key || fingerprint || coalesce(encode(response_body, 'escape'), '') || coalesce(response_headers::text, '')) > 0`,
        [scopeOf(token), token],
      );
      expect(rows).toEqual([{ api_key_id: scopeOf(token) }]);
    });

    it('matches the Bearer scheme case-insensitively', async () => {
      const key = randomUUID();
      const first = await post('/things', key, { a: 1 });
      const second = await send(fixture.url, { path: '/things', headers: [['Authorization', `bEaReR ${token}`], ['Idempotency-Key', key]], body: { a: 1 } });
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body).toEqual(first.body);
    });

    it.each([
      ['no Authorization header', []],
      ['another scheme', [['Authorization', 'Basic dXNlcjpwYXNz']]],
      ['an empty bearer token', [['Authorization', 'Bearer   ']]],
    ] as [string, [string, string][]][])('rejects a keyed request with %s: 401 idempotency_scope_unresolved', async (_name, lines) => {
      const before = fixture.probe.count('create');
      const response = await send(fixture.url, { path: '/things', headers: [...lines, ['Idempotency-Key', randomUUID()]], body: { a: 1 } });
      expect(response.status).toBe(401);
      expect(errorOf(response)).toMatchObject({ code: 'idempotency_scope_unresolved', param: null });
      expect(fixture.probe.count('create')).toBe(before);
    });
  });

  describe('W5/W6: store and replay', () => {
    it('replays status, body bytes and stored headers, adds idempotency-replayed, and runs the handler once', async () => {
      const key = randomUUID();
      const before = fixture.probe.count('text');
      const first = await post('/things/text', key);
      const second = await post('/things/text', key);
      expect(first.status).toBe(202);
      expect(first.headers['idempotency-replayed']).toBeUndefined();
      expect(second.status).toBe(202);
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body.equals(first.body)).toBe(true);
      for (const name of ['content-type', 'location', 'x-custom', 'content-length', 'etag']) {
        expect(second.headers[name]).toBe(first.headers[name]);
      }
      expect(second.headers['set-cookie']).toBeUndefined();
      expect(fixture.probe.count('text')).toBe(before + 1);
    });

    it('stores and replays through a middleware that wrapped end() on the response itself (as compression does)', async () => {
      const key = randomUUID();
      const before = fixture.probe.count('text');
      const first = await post('/things/text', key, undefined, [['X-Wrap-End', '1']]);
      const second = await post('/things/text', key, undefined, [['X-Wrap-End', '1']]);
      expect(first.status).toBe(202);
      expect(first.headers['x-wrapped']).toBe('yes');
      expect(second.status).toBe(202);
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.headers['x-wrapped']).toBe('yes');
      expect(second.body.equals(first.body)).toBe(true);
      expect(fixture.probe.count('text')).toBe(before + 1);
    });

    it('keeps a record for 24 hours from its first claim by default', async () => {
      const key = randomUUID();
      await post('/things', key, { a: 1 });
      const [{ exact }] = await fixture.dataSource.query(
        `SELECT (expires_at - created_at) = interval '24 hours' AS exact FROM idempotency_keys WHERE idem_key = $1`,
        [key],
      );
      expect(exact).toBe(true);
    });

    it('replays a JSON body whose keys the client reordered', async () => {
      const key = randomUUID();
      const first = await post('/things', key, { a: 1, b: { c: 2, d: 3 } });
      const third = await send(fixture.url, {
        path: '/things',
        headers: authed(token, key, [['Content-Type', 'application/json']]),
        body: '{ "b": {"d":3, "c":2}, "a": 1 }',
      });
      expect(third.headers['idempotency-replayed']).toBe('true');
      expect(third.body.equals(first.body)).toBe(true);
    });

    it('replays a binary StreamableFile and a redirect byte for byte', async () => {
      for (const path of ['/things/file', '/things/redirect']) {
        const key = randomUUID();
        const first = await post(path, key);
        const second = await post(path, key);
        expect(second.status).toBe(first.status);
        expect(second.headers['idempotency-replayed']).toBe('true');
        expect(second.body.equals(first.body)).toBe(true);
        expect(second.headers['content-type']).toBe(first.headers['content-type']);
        expect(second.headers.location).toBe(first.headers.location);
      }
      expect(fixture.probe.count('file')).toBe(1);
      expect(fixture.probe.count('redirect')).toBe(1);
    });

    it('replays a route whose handler writes its answer itself (@Res())', async () => {
      const key = randomUUID();
      const before = fixture.probe.count('manual');
      const first = await post('/things/manual', key);
      const second = await post('/things/manual', key);
      expect(first.status).toBe(201);
      expect(second.status).toBe(201);
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body.equals(first.body)).toBe(true);
      expect(second.headers['content-type']).toBe(first.headers['content-type']);
      expect(fixture.probe.count('manual')).toBe(before + 1);
    });

    it('replays a body of several hundred kB byte for byte', async () => {
      const key = randomUUID();
      const first = await post('/things/bulky', key);
      expect(first.status).toBe(201);
      expect(first.body.length).toBeGreaterThan(256 * 1024);
      const second = await post('/things/bulky', key);
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body.equals(first.body)).toBe(true);
      expect(fixture.probe.count('bulky')).toBe(1);
    });
  });

  describe('W7: which answers are stored', () => {
    it('replays a 404 rendered by an exception filter byte for byte and does not run the handler again', async () => {
      const key = randomUUID();
      const before = fixture.probe.count('missing');
      const first = await post('/things/missing', key);
      const second = await post('/things/missing', key);
      expect(first.status).toBe(404);
      expect(first.headers['x-filter']).toBe('not-found');
      expect(second.status).toBe(404);
      expect(second.body.equals(first.body)).toBe(true);
      expect(second.headers['content-type']).toBe(first.headers['content-type']);
      expect(second.headers['x-filter']).toBe('not-found');
      expect(fixture.probe.count('missing')).toBe(before + 1);
    });

    it('replays an HttpException 418 thrown by the handler', async () => {
      const key = randomUUID();
      const first = await post('/things/teapot', key);
      const second = await post('/things/teapot', key);
      expect(first.status).toBe(418);
      expect(second.body.equals(first.body)).toBe(true);
      expect(fixture.probe.count('teapot')).toBe(1);
    });

    it('does not store an unhandled exception: the retry runs the handler again', async () => {
      const key = randomUUID();
      const before = fixture.probe.count('crash');
      const first = await post('/things/crash', key);
      const second = await post('/things/crash', key);
      expect([first.status, second.status]).toEqual([500, 500]);
      expect(second.headers['idempotency-replayed']).toBeUndefined();
      expect(fixture.probe.count('crash')).toBe(before + 2);
    });

    it('releases the key after a 503 so the retry succeeds', async () => {
      const key = randomUUID();
      const first = await post('/things/flaky', key);
      const second = await post('/things/flaky', key);
      const third = await post('/things/flaky', key);
      expect(first.status).toBe(503);
      expect(second.status).toBe(201);
      expect(third.headers['idempotency-replayed']).toBe('true');
      expect(third.body.equals(second.body)).toBe(true);
    });
  });

  describe('W8: fingerprints', () => {
    it.each([
      ['a different body', '/things', { a: 2 }],
      ['a different query string', '/things?x=1', { a: 1 }],
      ['no body instead of a body', '/things', undefined],
    ])('answers 409 idempotency_key_conflict to %s and runs nothing', async (_name, path, body) => {
      const key = randomUUID();
      await post('/things', key, { a: 1 });
      const before = fixture.probe.count('create');
      const response = await post(path, key, body);
      expect(response.status).toBe(409);
      expect(errorOf(response)).toMatchObject({ code: 'idempotency_key_conflict', param: null });
      expect(fixture.probe.count('create')).toBe(before);
    });

    it('fingerprints the concrete path, not the route template', async () => {
      const key = randomUUID();
      expect((await post('/things/1', key)).status).toBe(201);
      const response = await post('/things/2', key);
      expect(response.status).toBe(409);
      expect(errorOf(response).code).toBe('idempotency_key_conflict');
    });

    it('never replays a body no parser read: a different binary body of the same length is a conflict', async () => {
      const key = randomUUID();
      const binary = [['Content-Type', 'application/x-unparsed']] as [string, string][];
      const first = await post('/things', key, Buffer.from('aaaa'), binary);
      // Fastify refuses a content type it has no parser for (415) before the module runs.
      if (platform === 'fastify') return expect(first.status).toBe(415);
      expect(first.status).toBe(201);
      const other = await post('/things', key, Buffer.from('bbbb'), binary);
      expect(other.status).toBe(409);
      expect(errorOf(other).code).toBe('idempotency_key_conflict');
    });

    it('tells no body from an empty JSON object', async () => {
      const key = randomUUID();
      expect((await post('/things', key)).status).toBe(201);
      expect((await post('/things', key, {})).status).toBe(409);
    });

    it('hashes a text body as raw bytes (the host parses text bodies)', async () => {
      const key = randomUUID();
      const first = await post('/things', key, 'hello');
      expect(first.status).toBe(201);
      expect((await post('/things', key, 'hello')).headers['idempotency-replayed']).toBe('true');
      expect((await post('/things', key, 'hellO')).status).toBe(409);
    });
  });

  describe('W11 and §2a: the error envelope and details', () => {
    it('renders every field of the Patomic envelope, with the request id of this request', async () => {
      const response = await post('/things', '', { a: 1 }, [['X-Request-Id', 'req_fixed_123']]);
      expect(response.json).toEqual({
        error: {
          type: 'idempotency_error',
          code: 'invalid_idempotency_key',
          message: expect.any(String),
          param: 'Idempotency-Key',
          docs_url: 'https://docs.patomic.dev/errors/invalid-idempotency-key',
          request_id: 'req_fixed_123',
          suggestion: expect.any(String),
        },
      });
      expect(response.json.error.message.length).toBeGreaterThan(10);
      expect(response.json.error.suggestion.length).toBeGreaterThan(10);
    });

    it('checks the key before the scope: an invalid key without credentials is a 400', async () => {
      const response = await send(fixture.url, { path: '/things', headers: [['Idempotency-Key', '']], body: { a: 1 } });
      expect(response.status).toBe(400);
    });

    it('runs a keyless request on a non-required route whatever its credentials', async () => {
      const response = await send(fixture.url, { path: '/things', headers: [['Authorization', 'Basic x']], body: { a: 1 } });
      expect(response.status).toBe(201);
    });

    it('reads one header line that contains ", " as one key', async () => {
      const key = `${randomUUID()}, second part`;
      const first = await post('/things', key, { a: 1 });
      const second = await post('/things', key, { a: 1 });
      expect(first.status).toBe(201);
      expect(second.headers['idempotency-replayed']).toBe('true');
      const stored = await fixture.dataSource.query('SELECT idem_key FROM idempotency_keys WHERE api_key_id = $1', [scopeOf(token)]);
      expect(stored).toEqual([{ idem_key: key }]);
    });

    it('strips leading and trailing spaces from the key', async () => {
      const key = randomUUID();
      const first = await post('/things', `   ${key}  `, { a: 1 });
      const second = await post('/things', key, { a: 1 });
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body.equals(first.body)).toBe(true);
    });

    it('keeps the x-request-id that middleware set for the replayed request, and stores no date or set-cookie', async () => {
      const key = randomUUID();
      const first = await post('/things/text', key, undefined, [['X-Request-Id', 'req_first']]);
      const second = await post('/things/text', key, undefined, [['X-Request-Id', 'req_second']]);
      expect(first.headers['x-request-id']).toBe('req_first');
      expect(second.headers['x-request-id']).toBe('req_second');
      expect(second.headers.date).toBeDefined();
      const [row] = await fixture.dataSource.query('SELECT response_headers FROM idempotency_keys WHERE api_key_id = $1', [scopeOf(token)]);
      const stored = Object.keys(row.response_headers);
      expect(stored).toEqual(expect.arrayContaining(['content-length', 'content-type', 'location', 'x-custom']));
      for (const name of ['date', 'set-cookie', 'x-request-id', 'connection', 'transfer-encoding', 'keep-alive']) expect(stored).not.toContain(name);
    });

    it('never stores a Date the handler set itself: the replay carries a fresh Date from the server', async () => {
      const key = randomUUID();
      const first = await post('/things/dated', key);
      expect(first.headers.date).toBe('Mon, 01 Jan 2001 00:00:00 GMT');
      const [row] = await fixture.dataSource.query('SELECT response_headers FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2', [scopeOf(token), key]);
      expect(Object.keys(row.response_headers)).not.toContain('date');
      const replay = await post('/things/dated', key);
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(first.body)).toBe(true);
      expect(replay.headers.date).not.toBe(first.headers.date);
      expect(Math.abs(Date.parse(String(replay.headers.date)) - Date.now())).toBeLessThan(60_000);
      expect(fixture.probe.count('dated')).toBe(1);
    });

    it('matches excludeHeaders case-insensitively: a mixed-case entry is neither stored nor replayed', async () => {
      const app = await startFixtureApp(database.url, { excludeHeaders: ['X-Request-Id'] }, platform);
      try {
        const key = randomUUID();
        const ask = (requestId: string) => send(app.url, { path: '/things', headers: authed(token, key, [['X-Request-Id', requestId]]), body: { a: 1 } });
        const first = await ask('req_first');
        expect(first.headers['x-request-id']).toBe('req_first');
        const [row] = await app.dataSource.query('SELECT response_headers FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2', [scopeOf(token), key]);
        expect(Object.keys(row.response_headers)).toEqual(expect.arrayContaining(['content-type']));
        expect(Object.keys(row.response_headers)).not.toContain('x-request-id');
        const replay = await ask('req_second');
        expect(replay.headers['idempotency-replayed']).toBe('true');
        expect(replay.body.equals(first.body)).toBe(true);
        // The host's own id for the replaying request, not the one of the first answer.
        expect(replay.headers['x-request-id']).toBe('req_second');
      } finally {
        await app.close();
      }
    });

    it('stores an answer rendered by a pipe after the claim', async () => {
      const key = randomUUID();
      const first = await post('/things/validated', key, { name: 5 });
      const second = await post('/things/validated', key, { name: 5 });
      expect(first.status).toBe(400);
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body.equals(first.body)).toBe(true);
    });

    it('never stores what a guard answered before the claim', async () => {
      const key = randomUUID();
      const denied = await post('/things/guarded', key, undefined, [['X-Deny', 'yes']]);
      expect(denied.status).toBe(403);
      expect(await recordCount()).toBe(0);
      const allowed = await post('/things/guarded', key);
      expect(allowed.status).toBe(201);
      expect(allowed.headers['idempotency-replayed']).toBeUndefined();
    });

    it('sends Retry-After in whole seconds with idempotency_key_in_use', async () => {
      const key = randomUUID();
      const gate = `retry-after-${key}`;
      const first = post(`/things/slow/${gate}`, key);
      await waitFor(() => fixture.probe.count(`slow:${gate}`) === 1);
      const busy = await post(`/things/slow/${gate}`, key);
      fixture.probe.gate(gate).open();
      expect((await first).status).toBe(201);
      expect(busy.status).toBe(409);
      expect(errorOf(busy)).toMatchObject({ code: 'idempotency_key_in_use', param: null });
      expect(busy.headers['retry-after']).toMatch(/^[1-9][0-9]*$/);
    });

    it('answers a conflict, not in_use, when the fingerprint differs while the first is in flight', async () => {
      const key = randomUUID();
      const gate = `conflict-${key}`;
      const first = post(`/things/slow/${gate}`, key);
      await waitFor(() => fixture.probe.count(`slow:${gate}`) === 1);
      const other = await post(`/things/slow/${gate}?different=1`, key);
      fixture.probe.gate(gate).open();
      await first;
      expect(other.status).toBe(409);
      expect(errorOf(other).code).toBe('idempotency_key_conflict');
    });
  });
});
