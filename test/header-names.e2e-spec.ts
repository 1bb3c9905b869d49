import { randomUUID } from 'node:crypto';
import type { IdempotencyModuleOptions } from '../src';
import { PLATFORMS, startFixtureApp, type FixtureApp } from './support/fixture-app';
import { send } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';

// The options `header` and `replayedHeader`, and the README's recipes built on them.
describe.each(PLATFORMS)('Header names (%s)', (platform) => {
  let database: TestDatabase;
  const apps: FixtureApp[] = [];
  let token: string;

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    for (const app of apps) await app.close();
    await database?.drop();
  });
  beforeEach(() => {
    token = `tok_${randomUUID()}`;
  });

  const start = async (options: IdempotencyModuleOptions) => {
    const app = await startFixtureApp(database.url, options, platform);
    apps.push(app);
    return app;
  };
  const post = (app: FixtureApp, path: string, headers: [string, string][], body: unknown = { a: 1 }) =>
    send(app.url, { path, headers: [['Authorization', `Bearer ${token}`], ...headers], body });

  describe('a key header of another name', () => {
    let app: FixtureApp;
    beforeAll(async () => {
      app = await start({ header: 'X-Request-Key', replayedHeader: 'X-Replayed' });
    });

    it('reads the key from it, in any case, and marks replays with the replayed header', async () => {
      const key = randomUUID();
      const first = await post(app, '/things', [['x-request-key', key]]);
      const replay = await post(app, '/things', [['X-REQUEST-KEY', key]]);
      expect(first.status).toBe(201);
      expect(first.headers['x-replayed']).toBeUndefined();
      expect(replay.headers['x-replayed']).toBe('true');
      expect(replay.headers['idempotency-replayed']).toBeUndefined();
      expect(replay.body.equals(first.body)).toBe(true);
    });

    it('treats an Idempotency-Key header as any other header: the request runs without a key', async () => {
      const key = randomUUID();
      const before = app.probe.count('create');
      await post(app, '/things', [['Idempotency-Key', key]]);
      const again = await post(app, '/things', [['Idempotency-Key', key]]);
      expect(again.status).toBe(201);
      expect(app.probe.count('create')).toBe(before + 2);
    });

    it('names that header in the key errors', async () => {
      const twice = await post(app, '/things', [['X-Request-Key', 'a'], ['X-Request-Key', 'a']]);
      expect(twice.status).toBe(400);
      expect(twice.json.error).toMatchObject({ code: 'invalid_idempotency_key', param: 'X-Request-Key' });
      const missing = await post(app, '/things/required', []);
      expect(missing.json.error).toMatchObject({ code: 'missing_idempotency_key', param: 'X-Request-Key' });
      expect(missing.json.error.message).toContain('X-Request-Key');
    });
  });

  it('sends no replay marker with replayedHeader: false', async () => {
    const app = await start({ replayedHeader: false });
    const key = randomUUID();
    const first = await post(app, '/things', [['Idempotency-Key', key]]);
    const replay = await post(app, '/things', [['Idempotency-Key', key]]);
    expect(replay.body.equals(first.body)).toBe(true);
    expect(app.probe.count('create')).toBe(1);
    expect(Object.keys(replay.headers).filter((name) => name.includes('replayed'))).toEqual([]);
  });

  it('answers as the IETF draft -09 recipe asks: problem details, 422 for a reused key, a required key', async () => {
    const app = await start({ errorFormat: 'problem+json', conflictStatus: 422 });
    const missing = await post(app, '/things/required', []);
    expect(missing.status).toBe(400);
    expect(missing.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(missing.json).toMatchObject({ code: 'missing_idempotency_key', status: 400 });
    const key = randomUUID();
    expect((await post(app, '/things/required', [['Idempotency-Key', `"${key}"`]])).status).toBe(201);
    const reused = await post(app, '/things/required', [['Idempotency-Key', key]], { other: true });
    expect(reused.status).toBe(422);
    expect(reused.json).toMatchObject({ code: 'idempotency_key_conflict', status: 422 });
  });

  it('marks replays as Stripe does in its recipe: Idempotent-Replayed', async () => {
    const app = await start({ replayedHeader: 'Idempotent-Replayed' });
    const key = randomUUID();
    await post(app, '/things', [['Idempotency-Key', key]]);
    const replay = await post(app, '/things', [['Idempotency-Key', key]]);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.headers['idempotency-replayed']).toBeUndefined();
  });
});
