import { randomUUID } from 'node:crypto';
import { PLATFORMS, ThingsController, bootFixture, type FixtureApp } from './support/fixture-app';
import { authed, send, type WireResponse } from './support/http-client';
import { LEDGER_SCHEMA, LedgerController } from './support/ledger-controller';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

const PROBLEM_MEMBERS = ['type', 'title', 'status', 'detail', 'instance', 'code', 'retryable'];

// errorFormat: 'problem+json' renders every error of the module as RFC 9457 problem details.
describe.each(PLATFORMS)("errorFormat: 'problem+json' (%s)", (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;
  let token: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    app = await bootFixture(database.url, {
      controllers: [ThingsController, LedgerController],
      platform,
      options: { errorFormat: 'problem+json', conflictStatus: 422 },
    });
    await app.dataSource.query(LEDGER_SCHEMA);
  });
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });
  beforeEach(() => {
    token = `tok_${randomUUID()}`;
  });
  afterEach(() => app?.probe.openAll());

  const post = (path: string, key?: string, body?: unknown) =>
    send(app.url, { path, headers: authed(token, key), body });
  /** The answer is a problem details document of this code and status, with every member. */
  const expectProblem = (answer: WireResponse, code: string, status: number, retryable = false) => {
    expect(answer.status).toBe(status);
    expect(answer.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
    expect(Object.keys(answer.json).sort()).toEqual([...PROBLEM_MEMBERS].sort());
    expect(answer.json).toMatchObject({
      type: `https://docs.patomic.dev/errors/${code.replace(/_/g, '-')}`,
      title: expect.any(String),
      status,
      detail: expect.any(String),
      instance: expect.stringMatching(/^urn:uuid:[0-9a-f-]{36}$/),
      code,
      retryable,
    });
  };

  it('answers an invalid key and a missing one with problem details', async () => {
    expectProblem(await post('/things', ''), 'invalid_idempotency_key', 400);
    expectProblem(await post('/things/required'), 'missing_idempotency_key', 400);
  });

  it('answers an unidentified caller with problem details', async () => {
    const answer = await send(app.url, { path: '/things', headers: [['Idempotency-Key', randomUUID()]] });
    expectProblem(answer, 'idempotency_scope_unresolved', 401);
  });

  it('answers a reused key with 422 as the IETF draft asks, not retryable', async () => {
    const key = randomUUID();
    expect((await post('/things', key, { a: 1 })).status).toBe(201);
    expectProblem(await post('/things', key, { a: 2 }), 'idempotency_key_conflict', 422);
  });

  it('answers a key in use as retryable, with Retry-After, and a new instance per occurrence', async () => {
    const key = randomUUID();
    const gate = `problem-${key}`;
    const first = post(`/things/slow/${gate}`, key);
    await waitFor(() => app.probe.count(`slow:${gate}`) === 1);
    const busy = [await post(`/things/slow/${gate}`, key), await post(`/things/slow/${gate}`, key)];
    app.probe.gate(gate).open();
    expect((await first).status).toBe(201);
    for (const answer of busy) {
      expectProblem(answer, 'idempotency_key_in_use', 409, true);
      expect(answer.headers['retry-after']).toBe('1');
    }
    expect(busy[0].json.instance).not.toBe(busy[1].json.instance);
  });

  it('renders the error that replaces an answer whose COMMIT failed as problem details too', async () => {
    const answer = await post('/ledger/bad-commit', randomUUID(), { note: randomUUID() });
    expectProblem(answer, 'internal_error', 500);
    expect(Number(answer.headers['content-length'])).toBe(answer.body.length);
  });

  it('replays a stored answer untouched: only the module errors change format', async () => {
    const key = randomUUID();
    const first = await post('/things/missing', key);
    const replay = await post('/things/missing', key);
    expect(first.status).toBe(404);
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(first.body)).toBe(true);
  });
});
