import diagnostics_channel from 'node:diagnostics_channel';
import { randomUUID } from 'node:crypto';
import { IDEMPOTENCY_CHANNELS, IdempotencyService, type IdempotencyEvent } from '../src';
import { PLATFORMS, startFixtureApp, type FixtureApp } from './support/fixture-app';
import { authed, send } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

// Events on node:diagnostics_channel and the key-expiry header.
describe.each(PLATFORMS)('Observability (%s)', (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;
  const events: IdempotencyEvent[] = [];
  const record = (message: unknown) => events.push(message as IdempotencyEvent);

  beforeAll(async () => {
    database = await createTestDatabase();
    app = await startFixtureApp(database.url, { ttl: 3_600_000 }, platform);
    for (const channel of Object.values(IDEMPOTENCY_CHANNELS)) diagnostics_channel.subscribe(channel, record);
  });
  afterAll(async () => {
    for (const channel of Object.values(IDEMPOTENCY_CHANNELS)) diagnostics_channel.unsubscribe(channel, record);
    await app?.close();
    await database?.drop();
  });
  beforeEach(() => {
    events.length = 0;
  });
  // A test that failed while a handler waited on a gate must not leave it hanging into app.close().
  afterEach(() => app?.probe.openAll());

  const names = () => events.map((event) => event.name);

  it('publishes claimed, stored, replayed and conflict with route, status and a hash of the key, never the key or token', async () => {
    const token = `tok_${randomUUID()}`;
    const key = `key_${randomUUID()}`;
    await send(app.url, { path: '/things', headers: authed(token, key), body: { secret: 'body-secret' } });
    await waitFor(() => names().includes('stored'));
    await send(app.url, { path: '/things', headers: authed(token, key), body: { secret: 'body-secret' } });
    await send(app.url, { path: '/things', headers: authed(token, key), body: { secret: 'other' } });
    expect(names()).toEqual(['claimed', 'stored', 'replayed', 'conflict']);
    const stored = events[1];
    expect(stored).toMatchObject({ route: 'ThingsController.create', method: 'POST', status: 201, keyHash: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect(stored.durationMs).toBeGreaterThanOrEqual(0);
    expect(new Set(events.map((event) => event.keyHash)).size).toBe(1);
    const serialised = JSON.stringify(events);
    for (const secret of [key, token, 'body-secret']) expect(serialised).not.toContain(secret);
  });

  it('publishes released for a 5xx and in_use for a duplicate in flight', async () => {
    const token = randomUUID();
    await send(app.url, { path: '/things/crash', headers: authed(token, randomUUID()) });
    await waitFor(() => names().includes('released'));
    expect(events.find((event) => event.name === 'released')?.status).toBe(500);

    const key = randomUUID();
    const gate = `events-${key}`;
    const pending = send(app.url, { path: `/things/slow/${gate}`, headers: authed(token, key) });
    await waitFor(() => app.probe.count(`slow:${gate}`) === 1);
    await send(app.url, { path: `/things/slow/${gate}`, headers: authed(token, key) });
    app.probe.gate(gate).open();
    await pending;
    expect(names()).toContain('in_use');
  });

  it('publishes purged with the count', async () => {
    await app.app.get(IdempotencyService).purgeExpired();
    expect(events).toContainEqual(expect.objectContaining({ name: 'purged', count: expect.any(Number) }));
  });

  it('tells the client when its key expires, on the first response and on replays, and not for a released key', async () => {
    const token = randomUUID();
    const key = randomUUID();
    const first = await send(app.url, { path: '/things', headers: authed(token, key) });
    const expiresAt = Date.parse(String(first.headers['idempotency-expires-at']));
    expect(expiresAt).toBeGreaterThan(Date.now() + 3_590_000);
    expect(expiresAt).toBeLessThan(Date.now() + 3_610_000);
    const replay = await send(app.url, { path: '/things', headers: authed(token, key) });
    expect(replay.headers['idempotency-expires-at']).toBe(first.headers['idempotency-expires-at']);
    const crashed = await send(app.url, { path: '/things/crash', headers: authed(token, randomUUID()) });
    expect(crashed.headers['idempotency-expires-at']).toBeUndefined();
  });
});
