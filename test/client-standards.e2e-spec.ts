import { randomUUID } from 'node:crypto';
import { idempotentRequest, type IdempotentRequestInit, type RetryEvent } from '../src/client';
import { PLATFORMS, startFixtureApp, type FixtureApp } from './support/fixture-app';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

// idempotentRequest against a module that speaks problem details under header names of its own.
describe.each(PLATFORMS)('idempotentRequest with problem details and other header names (%s)', (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;
  const names = { header: 'X-Request-Key', replayedHeader: 'Idempotent-Replayed' } as const;

  beforeAll(async () => {
    database = await createTestDatabase();
    app = await startFixtureApp(database.url, { errorFormat: 'problem+json', ...names }, platform);
  });
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });
  afterEach(() => app?.probe.openAll());

  const init = (body: unknown, extra: IdempotentRequestInit = {}): IdempotentRequestInit => ({
    method: 'POST',
    headers: { Authorization: `Bearer tok_${platform}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    baseDelayMs: 10,
    ...names,
    ...extra,
  });

  it('sends the key in the named header and reads a replay from the named replayed header', async () => {
    const idempotencyKey = randomUUID();
    const first = await idempotentRequest(`${app.url}/things`, init({ a: 1 }, { idempotencyKey }));
    const again = await idempotentRequest(`${app.url}/things`, init({ a: 1 }, { idempotencyKey }));
    expect([first.replayed, again.replayed]).toEqual([false, true]);
    expect(await again.response.text()).toBe(await first.response.text());
    expect(app.probe.count('create')).toBe(1);
  });

  it('takes a key already in the headers under the named header', async () => {
    const given = init({ b: 1 });
    const headers = { ...given.headers, 'x-request-key': 'given-1' };
    const result = await idempotentRequest(`${app.url}/things`, { ...given, headers });
    expect(result.idempotencyKey).toBe('given-1');
  });

  it('retries a problem marked retryable (key in use) and gets the replay of the one execution', async () => {
    const idempotencyKey = randomUUID();
    const gate = `client-${idempotencyKey}`;
    const original = idempotentRequest(`${app.url}/things/slow/${gate}`, init({}, { idempotencyKey }));
    await waitFor(() => app.probe.count(`slow:${gate}`) === 1);
    const retries: RetryEvent[] = [];
    const duplicate = await idempotentRequest(
      `${app.url}/things/slow/${gate}`,
      init({}, { idempotencyKey, onRetry: (retry) => (retries.push(retry), app.probe.gate(gate).open()) }),
    );
    expect(retries).toEqual([expect.objectContaining({ attempt: 1, reason: 'idempotency_key_in_use', status: 409 })]);
    expect([duplicate.attempts, duplicate.replayed]).toEqual([2, true]);
    expect(await duplicate.response.text()).toBe(await (await original).response.text());
  });

  it('never retries a problem that is not retryable (a key reused with another body)', async () => {
    const idempotencyKey = randomUUID();
    await idempotentRequest(`${app.url}/things`, init({ c: 1 }, { idempotencyKey }));
    const reused = await idempotentRequest(`${app.url}/things`, init({ c: 2 }, { idempotencyKey }));
    expect([reused.response.status, reused.attempts]).toEqual([409, 1]);
    expect(await reused.response.json()).toMatchObject({ code: 'idempotency_key_conflict', retryable: false });
  });
});
