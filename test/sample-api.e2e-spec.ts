import { createHmac, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { bootstrapApiKey } from '../sample/sample-app';
import { KeysService } from '../sample/keys/keys.service';
import { authed, send, type WireRequest, type WireResponse } from './support/http-client';
import { buildProject, freePort, startSampleProcess, type SampleProcess } from './support/sample-process';
import { startSample, type RunningSample } from './support/sample-server';

// The sample API of SPEC §7, booted with the same wiring as `npm start`, on a real PostgreSQL.
describe('Sample API: /v1/keys on PostgreSQL', () => {
  let sample: RunningSample;
  let adminKey: string;
  /** Every answer of the file, to check the request id rules over all of them at the end. */
  const answers: WireResponse[] = [];

  beforeAll(async () => {
    sample = await startSample();
    adminKey = sample.bootstrapKey;
  });
  afterAll(async () => {
    await sample?.close();
  });

  const call = async (request: WireRequest): Promise<WireResponse> => {
    const response = await send(sample.url, request);
    answers.push(response);
    return response;
  };
  const mint = (body: unknown, key?: string, token = adminKey) => call({ path: '/v1/keys', headers: authed(token, key), body });
  const get = (path: string, token = adminKey) => call({ method: 'GET', path, headers: authed(token) });
  const patch = (id: string, body: unknown, key?: string) => call({ method: 'PATCH', path: `/v1/keys/${id}`, headers: authed(adminKey, key), body });
  const revoke = (id: string, key?: string, token = adminKey) => call({ method: 'DELETE', path: `/v1/keys/${id}`, headers: authed(token, key) });
  const rowsNamed = async (name: string) => Number((await sample.dataSource.query('SELECT count(*) AS n FROM api_keys WHERE name = $1', [name]))[0].n);
  const uniqueName = (label: string) => `${label} ${randomUUID().slice(0, 8)}`;
  /** An error body with its request id blanked, to compare two errors. */
  const withoutRequestId = (response: WireResponse) => ({ ...response.json, error: { ...response.json.error, request_id: '<id>' } });

  const expectEnvelope = (response: WireResponse, status: number, type: string, code: string, param: string | null = null) => {
    expect(response.status).toBe(status);
    expect(response.headers['content-type']).toMatch(/^application\/json/);
    expect(Object.keys(response.json)).toEqual(['error']);
    expect(response.json.error).toEqual({
      type,
      code,
      message: expect.any(String),
      param,
      docs_url: `https://docs.patomic.dev/errors/${code.replace(/_/g, '-')}`,
      request_id: response.headers['x-request-id'],
      suggestion: expect.any(String),
    });
    expect(response.json.error.message.length).toBeGreaterThan(0);
    expect(response.json.error.suggestion.length).toBeGreaterThan(0);
  };

  describe('bootstrap', () => {
    it('mints the first key only once: a second bootstrap on the same database returns null', async () => {
      expect(adminKey).toMatch(/^ptmc_[A-Za-z0-9_-]{43}$/);
      expect(await bootstrapApiKey(sample.app)).toBeNull();
      expect((await get('/v1/keys')).status).toBe(200);
    });
  });

  describe('schema', () => {
    it('has the api_keys table of the migration exactly as the entity declares it: TypeORM sees nothing to change', async () => {
      const pending = await sample.dataSource.driver.createSchemaBuilder().log();
      expect(pending.upQueries.map((query) => query.query)).toEqual([]);
    });
  });

  describe('POST /v1/keys', () => {
    it('mints a key: 201 with the documented fields in order and a ptmc_ key of 43 base64url characters', async () => {
      const name = uniqueName('CI integration');
      const response = await mint({ name, rate_limit_rpm: 1000 }, randomUUID());
      expect(response.status).toBe(201);
      expect(Object.keys(response.json)).toEqual(['id', 'name', 'rate_limit_rpm', 'prefix', 'created_at', 'revoked_at', 'plain_key']);
      expect(response.json).toEqual({
        id: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/),
        name,
        rate_limit_rpm: 1000,
        prefix: response.json.plain_key.slice(0, 13),
        created_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
        revoked_at: null,
        plain_key: expect.stringMatching(/^ptmc_[A-Za-z0-9_-]{43}$/),
      });
      expect(response.headers['idempotency-replayed']).toBeUndefined();
    });

    it('mints in transactional mode: a mint whose COMMIT fails leaves no key and no record, and its retry mints exactly one', async () => {
      const name = uniqueName('reject-at-commit');
      const key = randomUUID();
      // A check PostgreSQL runs only at COMMIT, after the handler answered.
      await sample.dataSource.query(`
        CREATE FUNCTION reject_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.name LIKE 'reject-at-commit%' THEN RAISE EXCEPTION 'rejected at commit'; END IF; RETURN NEW; END $$;
        CREATE CONSTRAINT TRIGGER reject_at_commit AFTER INSERT ON api_keys DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW EXECUTE FUNCTION reject_at_commit();`);
      let failed: WireResponse;
      try {
        failed = await mint({ name }, key);
      } finally {
        await sample.dataSource.query('DROP TRIGGER reject_at_commit ON api_keys; DROP FUNCTION reject_at_commit();');
      }
      expect(failed.status).toBe(500);
      expect(failed.json.error.code).toBe('internal_error');
      const rows = () => sample.dataSource.query('SELECT id FROM api_keys WHERE name = $1', [name]);
      expect(await rows()).toHaveLength(0);
      expect(await sample.dataSource.query('SELECT 1 FROM idempotency_keys WHERE idem_key = $1', [key])).toHaveLength(0);
      const retry = await mint({ name }, key);
      expect(retry.status).toBe(201);
      expect(await rows()).toHaveLength(1);
    });

    it('defaults rate_limit_rpm to 60 and works without an Idempotency-Key', async () => {
      const response = await mint({ name: uniqueName('default rate') });
      expect(response.status).toBe(201);
      expect(response.json.rate_limit_rpm).toBe(60);
    });

    it('stores only an HMAC-SHA256 of the key with the server secret, never the key itself', async () => {
      const { json } = await mint({ name: uniqueName('hashed') });
      const [row] = await sample.dataSource.query('SELECT * FROM api_keys WHERE id = $1', [json.id]);
      expect(row.key_hash).toBe(createHmac('sha256', sample.keySecret).update(json.plain_key).digest('hex'));
      expect(row.prefix).toBe(json.plain_key.slice(0, 13));
      // Not the key, and not the part of it that the prefix does not show.
      const stored = JSON.stringify(row);
      expect(stored).not.toContain(json.plain_key);
      expect(stored).not.toContain(json.plain_key.slice(13));
    });

    it('makes the minted key usable at once', async () => {
      const { json } = await mint({ name: uniqueName('usable') });
      const response = await get(`/v1/keys/${json.id}`, json.plain_key);
      expect(response.status).toBe(200);
      expect(response.json.id).toBe(json.id);
    });

    it('replays a retried mint byte for byte with idempotency-replayed: true and mints exactly one key', async () => {
      const name = uniqueName('retried');
      const key = randomUUID();
      const first = await mint({ name, rate_limit_rpm: 1000 }, key);
      // Same request with the fields in another order: the same JSON, hence the same request.
      const second = await mint({ rate_limit_rpm: 1000, name }, key);
      expect(first.status).toBe(201);
      expect(second.status).toBe(201);
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body.equals(first.body)).toBe(true);
      expect(second.json.plain_key).toBe(first.json.plain_key);
      // The replay is the original answer in full, request id included.
      expect(second.headers['x-request-id']).toBe(first.headers['x-request-id']);
      expect(await rowsNamed(name)).toBe(1);
    });

    it('answers 409 idempotency_key_conflict, unchanged from the module, when the body changes, and mints nothing', async () => {
      const name = uniqueName('conflict');
      const key = randomUUID();
      await mint({ name }, key);
      const response = await mint({ name: `${name} changed` }, key);
      expectEnvelope(response, 409, 'idempotency_error', 'idempotency_key_conflict');
      expect(await rowsNamed(`${name} changed`)).toBe(0);
      expect(await rowsNamed(name)).toBe(1);
    });

    it('scopes Idempotency-Keys per API key: the same key value from another API key mints another key', async () => {
      const other = (await mint({ name: uniqueName('second caller') })).json;
      const name = uniqueName('shared idempotency value');
      const key = randomUUID();
      const mine = await mint({ name }, key);
      const theirs = await mint({ name }, key, other.plain_key);
      expect(theirs.status).toBe(201);
      expect(theirs.headers['idempotency-replayed']).toBeUndefined();
      expect(theirs.json.id).not.toBe(mine.json.id);
      expect(await rowsNamed(name)).toBe(2);
      // Records are stored under the authenticated key's id, not under anything derived from the token.
      const scopes = await sample.dataSource.query('SELECT api_key_id FROM idempotency_keys WHERE idem_key = $1 ORDER BY api_key_id', [key]);
      const ids = (await sample.dataSource.query('SELECT id FROM api_keys WHERE key_hash = ANY($1) ORDER BY id', [
        [adminKey, other.plain_key].map((plain) => createHmac('sha256', sample.keySecret).update(plain).digest('hex')),
      ])) as { id: string }[];
      expect(scopes.map((row: { api_key_id: string }) => row.api_key_id)).toEqual(ids.map((row) => row.id));
    });

    it.each([
      ['a missing name', {}, 'parameter_missing', 'name'],
      ['an empty name', { name: '' }, 'invalid_parameter', 'name'],
      ['a blank name', { name: '   ' }, 'invalid_parameter', 'name'],
      ['a name of 101 characters', { name: 'n'.repeat(101) }, 'invalid_parameter', 'name'],
      ['a numeric name', { name: 42 }, 'invalid_parameter', 'name'],
      ['a null name', { name: null }, 'invalid_parameter', 'name'],
      ['rate_limit_rpm 0', { name: 'x', rate_limit_rpm: 0 }, 'invalid_parameter', 'rate_limit_rpm'],
      ['rate_limit_rpm 100001', { name: 'x', rate_limit_rpm: 100_001 }, 'invalid_parameter', 'rate_limit_rpm'],
      ['a fractional rate_limit_rpm', { name: 'x', rate_limit_rpm: 1.5 }, 'invalid_parameter', 'rate_limit_rpm'],
      ['rate_limit_rpm as a string', { name: 'x', rate_limit_rpm: '60' }, 'invalid_parameter', 'rate_limit_rpm'],
      ['an unknown field', { name: 'x', rate_limit: 10 }, 'invalid_parameter', 'rate_limit'],
    ])('answers 400 to %s, naming the parameter, and mints nothing', async (_label, body, code, param) => {
      const before = Number((await sample.dataSource.query('SELECT count(*) AS n FROM api_keys'))[0].n);
      const response = await mint(body, randomUUID());
      expectEnvelope(response, 400, 'invalid_request_error', code, param);
      expect(Number((await sample.dataSource.query('SELECT count(*) AS n FROM api_keys'))[0].n)).toBe(before);
    });

    it('accepts a name of exactly 100 characters (counted as characters, not bytes) and rate_limit_rpm 100000', async () => {
      const name = `${'é'.repeat(60)}${randomUUID()}`.slice(0, 100);
      const response = await mint({ name, rate_limit_rpm: 100_000 });
      expect(response.status).toBe(201);
      expect(response.json.name).toBe(name);
    });

    it('answers 400 invalid_body to a JSON array and 400 invalid_json to malformed JSON', async () => {
      expectEnvelope(await mint([{ name: 'x' }]), 400, 'invalid_request_error', 'invalid_body');
      const malformed = await call({ path: '/v1/keys', headers: [...authed(adminKey), ['Content-Type', 'application/json']], body: '{"name":' });
      expectEnvelope(malformed, 400, 'invalid_request_error', 'invalid_json');
    });

    it('answers 415 to a body that is not JSON (e.g. curl -d without a Content-Type)', async () => {
      const response = await call({
        path: '/v1/keys',
        headers: [...authed(adminKey), ['Content-Type', 'application/x-www-form-urlencoded']],
        body: 'name=x',
      });
      expectEnvelope(response, 415, 'invalid_request_error', 'unsupported_media_type');
    });

    it('stores a validation 400 like any answer: the retry replays it, with the original request id inside and outside', async () => {
      const key = randomUUID();
      const first = await mint({ name: '' }, key);
      const second = await mint({ name: '' }, key);
      expectEnvelope(first, 400, 'invalid_request_error', 'invalid_parameter', 'name');
      expect(second.headers['idempotency-replayed']).toBe('true');
      expect(second.body.equals(first.body)).toBe(true);
      expect(second.json.error.request_id).toBe(second.headers['x-request-id']);
    });

    it("passes the module's 400 invalid_idempotency_key through unchanged", async () => {
      const response = await mint({ name: 'x' }, 'k'.repeat(256));
      expectEnvelope(response, 400, 'idempotency_error', 'invalid_idempotency_key', 'Idempotency-Key');
    });

    it('answers a failure inside the handler with a 500 api_error, stores nothing, and runs the retry', async () => {
      const name = uniqueName('after outage');
      const key = randomUUID();
      // A real fault in the database: inserts into api_keys fail until the trigger is dropped.
      await sample.dataSource.query(`
        CREATE FUNCTION reject_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
        CREATE TRIGGER reject_insert BEFORE INSERT ON api_keys FOR EACH ROW EXECUTE FUNCTION reject_insert();`);
      let failed: WireResponse;
      try {
        failed = await mint({ name }, key);
      } finally {
        await sample.dataSource.query('DROP TRIGGER reject_insert ON api_keys; DROP FUNCTION reject_insert();');
      }
      expectEnvelope(failed, 500, 'api_error', 'internal_error');
      expect(failed.body.toString()).not.toContain('injected failure');
      const retried = await mint({ name }, key);
      expect(retried.status).toBe(201);
      expect(retried.headers['idempotency-replayed']).toBeUndefined();
      expect(await rowsNamed(name)).toBe(1);
    });
  });

  describe('GET /v1/keys', () => {
    const expectedOrder = async () =>
      ((await sample.dataSource.query('SELECT id FROM api_keys ORDER BY created_at DESC, id DESC')) as { id: string }[]).map((row) => row.id);

    beforeAll(async () => {
      // More keys than one default page, minted the way the API mints them.
      const keys = sample.app.get(KeysService);
      for (let i = 0; i < 22; i++) await keys.mint({ name: `listed ${i}`, rateLimitRpm: 60 });
    });

    it('pages through every key newest first with page_size and cursor; next_cursor is null on the last page', async () => {
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const query: string = cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`;
        const response = await get(`/v1/keys?page_size=7${query}`);
        expect(response.status).toBe(200);
        expect(Object.keys(response.json)).toEqual(['data', 'next_cursor']);
        expect(response.json.data.length).toBeLessThanOrEqual(7);
        for (const key of response.json.data) {
          expect(Object.keys(key)).toEqual(['id', 'name', 'rate_limit_rpm', 'prefix', 'created_at', 'revoked_at']);
          seen.push(key.id);
        }
        cursor = response.json.next_cursor;
        if (cursor !== null) expect(response.json.data).toHaveLength(7);
        pages++;
      } while (cursor !== null && pages < 100);
      expect(seen).toEqual(await expectedOrder());
    });

    it('returns 20 keys by default and never shows plain_key', async () => {
      const response = await get('/v1/keys');
      expect(response.json.data).toHaveLength(20);
      expect(response.json.next_cursor).toEqual(expect.any(String));
      expect(response.body.toString()).not.toContain('plain_key');
      expect(response.json.data.map((key: { id: string }) => key.id)).toEqual((await expectedOrder()).slice(0, 20));
    });

    it('keeps its pages stable when keys are minted between two pages', async () => {
      const first = await get('/v1/keys?page_size=3');
      await mint({ name: uniqueName('minted between pages') });
      const next = await get(`/v1/keys?page_size=3&cursor=${first.json.next_cursor}`);
      const order = await expectedOrder();
      const start = order.indexOf(first.json.data[2].id) + 1;
      expect(next.json.data.map((key: { id: string }) => key.id)).toEqual(order.slice(start, start + 3));
    });

    it.each([
      ['page_size=0', 'page_size'],
      ['page_size=101', 'page_size'],
      ['page_size=abc', 'page_size'],
      ['page_size=2&page_size=3', 'page_size'],
      ['cursor=not-a-cursor', 'cursor'],
      [`cursor=${Buffer.from(`key:${randomUUID()}`).toString('base64url')}`, 'cursor'],
      ['limit=5', 'limit'],
    ])('answers 400 invalid_parameter to ?%s', async (query, param) => {
      expectEnvelope(await get(`/v1/keys?${query}`), 400, 'invalid_request_error', 'invalid_parameter', param);
    });
  });

  describe('GET /v1/keys/:id', () => {
    it('returns the key without plain_key', async () => {
      const minted = (await mint({ name: uniqueName('fetched'), rate_limit_rpm: 5 })).json;
      const response = await get(`/v1/keys/${minted.id}`);
      expect(response.status).toBe(200);
      const { plain_key: _plain, ...shown } = minted;
      expect(response.json).toEqual(shown);
    });

    it.each([
      ['an unknown id', randomUUID()],
      ['a malformed id', 'not-a-uuid'],
    ])('answers 404 resource_missing to %s', async (_label, id) => {
      expectEnvelope(await get(`/v1/keys/${id}`), 404, 'invalid_request_error', 'resource_missing', 'id');
    });
  });

  describe('PATCH /v1/keys/:id', () => {
    it('updates name and rate_limit_rpm and returns the key', async () => {
      const minted = (await mint({ name: uniqueName('to rename') })).json;
      const name = uniqueName('renamed');
      const response = await patch(minted.id, { name, rate_limit_rpm: 250 });
      expect(response.status).toBe(200);
      expect(response.json).toEqual({ ...minted, name, rate_limit_rpm: 250, plain_key: undefined });
      expect('plain_key' in response.json).toBe(false);
      expect((await get(`/v1/keys/${minted.id}`)).json).toEqual(response.json);
    });

    it('changes only the fields sent', async () => {
      const minted = (await mint({ name: uniqueName('partial'), rate_limit_rpm: 7 })).json;
      expect((await patch(minted.id, { rate_limit_rpm: 8 })).json).toMatchObject({ name: minted.name, rate_limit_rpm: 8 });
      expect((await patch(minted.id, {})).json).toMatchObject({ name: minted.name, rate_limit_rpm: 8 });
    });

    it('replays a retried update and answers 409 when the same key comes with another body', async () => {
      const minted = (await mint({ name: uniqueName('patched twice') })).json;
      const key = randomUUID();
      const first = await patch(minted.id, { rate_limit_rpm: 11 }, key);
      await patch(minted.id, { rate_limit_rpm: 12 }); // changed in between, without a key
      const replay = await patch(minted.id, { rate_limit_rpm: 11 }, key);
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(first.body)).toBe(true);
      expectEnvelope(await patch(minted.id, { rate_limit_rpm: 13 }, key), 409, 'idempotency_error', 'idempotency_key_conflict');
      expect((await get(`/v1/keys/${minted.id}`)).json.rate_limit_rpm).toBe(12);
    });

    it.each([
      [{ name: '' }, 'name'],
      [{ name: 7 }, 'name'],
      [{ rate_limit_rpm: -1 }, 'rate_limit_rpm'],
      [{ rate_limit_rpm: null }, 'rate_limit_rpm'],
      [{ revoked_at: null }, 'revoked_at'],
      [{ plain_key: 'ptmc_x' }, 'plain_key'],
    ])('answers 400 invalid_parameter to %j', async (body, param) => {
      const minted = (await mint({ name: uniqueName('invalid patch') })).json;
      expectEnvelope(await patch(minted.id, body), 400, 'invalid_request_error', 'invalid_parameter', param);
      expect((await get(`/v1/keys/${minted.id}`)).json).toMatchObject({ name: minted.name, rate_limit_rpm: 60, revoked_at: null });
    });

    it('answers 404 to an unknown key', async () => {
      expectEnvelope(await patch(randomUUID(), { name: 'x' }), 404, 'invalid_request_error', 'resource_missing', 'id');
      expectEnvelope(await patch('nope', { name: 'x' }), 404, 'invalid_request_error', 'resource_missing', 'id');
    });
  });

  describe('DELETE /v1/keys/:id', () => {
    it('revokes: 200 with revoked_at set, the key stays listed, and it no longer authenticates', async () => {
      const minted = (await mint({ name: uniqueName('to revoke') })).json;
      expect((await get('/v1/keys?page_size=1', minted.plain_key)).status).toBe(200);
      const response = await revoke(minted.id, randomUUID());
      expect(response.status).toBe(200);
      expect(response.json).toEqual({ ...minted, plain_key: undefined, revoked_at: expect.stringMatching(/Z$/) });
      expect('plain_key' in response.json).toBe(false);
      expect((await get(`/v1/keys/${minted.id}`)).json.revoked_at).toBe(response.json.revoked_at);
      const rejected = await get('/v1/keys', minted.plain_key);
      expectEnvelope(rejected, 401, 'authentication_error', 'invalid_api_key');
    });

    it('keeps the first revoked_at when revoked again, and replays a retried revoke', async () => {
      const minted = (await mint({ name: uniqueName('revoked twice') })).json;
      const key = randomUUID();
      const first = await revoke(minted.id, key);
      const replay = await revoke(minted.id, key);
      const again = await revoke(minted.id);
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(first.body)).toBe(true);
      expect(again.status).toBe(200);
      expect(again.json.revoked_at).toBe(first.json.revoked_at);
    });

    it('lets a key revoke itself; its next request is a 401', async () => {
      const minted = (await mint({ name: uniqueName('self revoking') })).json;
      expect((await revoke(minted.id, undefined, minted.plain_key)).status).toBe(200);
      expect((await revoke(minted.id, undefined, minted.plain_key)).status).toBe(401);
    });

    it('answers 404 to an unknown key', async () => {
      expectEnvelope(await revoke(randomUUID()), 404, 'invalid_request_error', 'resource_missing', 'id');
    });
  });

  describe('authentication', () => {
    it('answers every failure with the same 401 apart from request_id: missing, other scheme, empty, malformed, unknown, revoked', async () => {
      const revoked = (await mint({ name: uniqueName('revoked for 401') })).json;
      await revoke(revoked.id);
      const unknown = `ptmc_${'A'.repeat(43)}`;
      const variants: [string, [string, string][]][] = [
        ['missing', []],
        ['another scheme', [['Authorization', `Basic ${Buffer.from('user:pass').toString('base64')}`]]],
        ['empty bearer', [['Authorization', 'Bearer ']]],
        ['malformed', [['Authorization', 'Bearer ptmc_tooshort']]],
        ['no ptmc_ prefix', [['Authorization', `Bearer ${revoked.plain_key.slice(5)}`]]],
        ['unknown', [['Authorization', `Bearer ${unknown}`]]],
        ['revoked', [['Authorization', `Bearer ${revoked.plain_key}`]]],
      ];
      const responses: WireResponse[] = [];
      for (const [, headers] of variants) {
        responses.push(await call({ method: 'GET', path: '/v1/keys', headers }));
        responses.push(await call({ path: '/v1/keys', headers: [...headers, ['Idempotency-Key', randomUUID()]], body: { name: 'x' } }));
      }
      for (const response of responses) {
        expectEnvelope(response, 401, 'authentication_error', 'invalid_api_key');
        expect(response.headers['www-authenticate']).toBe('Bearer realm="patomic"');
        expect(withoutRequestId(response)).toEqual(withoutRequestId(responses[0]));
      }
      expect(new Set(responses.map((response) => response.json.error.request_id)).size).toBe(responses.length);
    });

    it('runs nothing and stores nothing for an unauthenticated request with an Idempotency-Key', async () => {
      const key = randomUUID();
      await call({ path: '/v1/keys', headers: [['Idempotency-Key', key]], body: { name: 'sneaky' } });
      expect(await sample.dataSource.query('SELECT 1 FROM idempotency_keys WHERE idem_key = $1', [key])).toEqual([]);
      expect(await rowsNamed('sneaky')).toBe(0);
    });
  });

  describe('errors and request ids', () => {
    it('answers an unknown route with a 404 envelope', async () => {
      expectEnvelope(await get('/v2/nothing'), 404, 'invalid_request_error', 'route_not_found');
    });

    it('gives every answer of this file an x-request-id, and every error the same id as request_id', () => {
      expect(answers.length).toBeGreaterThan(50);
      for (const response of answers) {
        expect(response.headers['x-request-id']).toMatch(/^req_[A-Za-z0-9_-]{22}$/);
        if (response.status >= 400) expect(response.json.error.request_id).toBe(response.headers['x-request-id']);
      }
      // Fresh for every request, except a replay, which is the original answer in full.
      const firstHand = answers.filter((response) => response.headers['idempotency-replayed'] !== 'true');
      expect(new Set(firstHand.map((response) => response.headers['x-request-id'])).size).toBe(firstHand.length);
    });
  });
});

// What `npm start` runs after its build step: the compiled main.ts, twice on one data folder.
describe('npm start: node dist/sample/main.js on an embedded PostgreSQL', () => {
  const repositoryRoot = process.cwd();
  let buildDir: string;
  let dataDir: string;
  let port: number;
  const started: SampleProcess[] = [];

  beforeAll(async () => {
    expect(existsSync(path.join(repositoryRoot, 'tsconfig.build.json'))).toBe(true);
    // Inside the repository (for node_modules) but apart from the dist/ that `npm run build` owns.
    await mkdir(path.join(repositoryRoot, 'dist'), { recursive: true }); // a fresh clone has none
    buildDir = await mkdtemp(path.join(repositoryRoot, 'dist', '.sample-e2e-'));
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'sample-data-'));
    // mkdtemp makes it 700; as root, PostgreSQL runs as "postgres" and must traverse it (main.ts makes .data/ 711).
    await chmod(dataDir, 0o711);
    port = await freePort();
    await buildProject(repositoryRoot, buildDir);
  }, 60_000);
  afterAll(async () => {
    for (const process of started) await process.stop('SIGKILL', 5_000).catch(() => undefined);
    if (buildDir) await rm(buildDir, { recursive: true, force: true });
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  const start = () => {
    const env: NodeJS.ProcessEnv = { ...process.env, SAMPLE_DATA_DIR: dataDir, PORT: String(port) };
    // Jest's global setup points DATABASE_URL at its server; npm start without it starts its own.
    delete env.DATABASE_URL;
    delete env.PATOMIC_KEY_SECRET;
    delete env.PATOMIC_RECORD_SECRET;
    delete env.HOST;
    const child = startSampleProcess(path.join(buildDir, 'sample', 'main.js'), env);
    started.push(child);
    return child;
  };
  const baseUrl = () => `http://127.0.0.1:${port}`;

  it('prints one bootstrap key on the first start only, keeps keys across a restart, and stops on SIGTERM and SIGINT with exit code 0', async () => {
    // First start: a new data folder, a new cluster, one key.
    const first = start();
    await first.waitForLine(/listening on http:\/\/127\.0\.0\.1:\d+/, 20_000);
    const keyLines = first.stdout.filter((line) => line.includes('Bootstrap API key'));
    expect(keyLines).toHaveLength(1);
    expect(keyLines[0]).toMatch(/^Bootstrap API key: ptmc_[A-Za-z0-9_-]{43}$/);
    const bootstrapKey = keyLines[0].slice('Bootstrap API key: '.length);
    expect((await stat(path.join(dataDir, 'key-secret'))).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(dataDir, 'record-secret'))).mode & 0o777).toBe(0o600);

    const idempotencyKey = randomUUID();
    const request = { path: '/v1/keys', headers: authed(bootstrapKey, idempotencyKey), body: { name: 'CI integration', rate_limit_rpm: 1000 } };
    const minted = await send(baseUrl(), request);
    expect(minted.status).toBe(201);
    const replayed = await send(baseUrl(), request);
    expect(replayed.headers['idempotency-replayed']).toBe('true');
    expect(replayed.body.equals(minted.body)).toBe(true);

    const firstStop = await first.stop('SIGTERM', 10_000);
    expect(firstStop).toMatchObject({ code: 0, signal: null });
    expect(firstStop.ms).toBeLessThan(5_000);
    // PostgreSQL removes its pid file only when it has shut down.
    expect(existsSync(path.join(dataDir, 'postgres', 'postmaster.pid'))).toBe(false);

    // Second start on the same folder: no new key, and the old keys (same secret) still work.
    const second = start();
    await second.waitForLine(/listening on/, 20_000);
    expect(second.stdout.filter((line) => line.includes('Bootstrap API key'))).toEqual([]);
    const fetched = await send(baseUrl(), { method: 'GET', path: `/v1/keys/${minted.json.id}`, headers: authed(minted.json.plain_key) });
    expect(fetched.status).toBe(200);
    expect(fetched.json.name).toBe('CI integration');
    const replayedAfterRestart = await send(baseUrl(), request);
    expect(replayedAfterRestart.body.equals(minted.body)).toBe(true);

    const secondStop = await second.stop('SIGINT', 10_000);
    expect(secondStop).toMatchObject({ code: 0, signal: null });
    expect(secondStop.ms).toBeLessThan(5_000);
    expect(existsSync(path.join(dataDir, 'postgres', 'postmaster.pid'))).toBe(false);
  }, 60_000);

  // Only root hands PostgreSQL to another user; anyone else runs it as themselves and can traverse a 700 folder.
  const asRoot = process.getuid?.() === 0 ? it : it.skip;
  asRoot('exits 1 with the fix-it message, and no stack trace, when PostgreSQL cannot reach its data folder', async () => {
    // Root runs PostgreSQL as "postgres", which cannot traverse a 700 folder (a mktemp -d clone, say).
    const blocked = path.join(dataDir, 'private');
    await mkdir(blocked, { mode: 0o700 });
    await chmod(blocked, 0o700);
    const env: NodeJS.ProcessEnv = { ...process.env, SAMPLE_DATA_DIR: path.join(blocked, 'data'), PORT: String(port) };
    delete env.DATABASE_URL;
    const failing = startSampleProcess(path.join(buildDir, 'sample', 'main.js'), env);
    started.push(failing);
    expect(await failing.waitForExit(15_000)).toEqual({ code: 1, signal: null });
    const stderr = failing.stderr.join('\n');
    expect(stderr).toContain(`Could not start the sample API: PostgreSQL runs as the unprivileged "postgres" user`);
    expect(stderr).toContain(`chmod o+x ${blocked}`);
    expect(stderr).not.toMatch(/^\s+at /m);
    expect(failing.stdout.filter((line) => line.includes('Bootstrap API key'))).toEqual([]);
  });
});
