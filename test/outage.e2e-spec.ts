import { randomUUID } from 'node:crypto';
import { PLATFORMS, PlainController, ThingsController, WholeController, bootFixture, type FixtureApp } from './support/fixture-app';
import { authed, send, type WireResponse } from './support/http-client';
import { LEDGER_SCHEMA, LedgerController } from './support/ledger-controller';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

const STORE_TIMEOUT = 1500;
const LEASE = 2000;

// W13: the database goes away and comes back while the app keeps running; a database that does
// not answer yields a 503 within storeTimeout.
describe.each(PLATFORMS)('Database outage (%s)', (platform) => {
  let database: TestDatabase;
  let proxy: TcpProxy;
  let app: FixtureApp;

  beforeAll(async () => {
    database = await createTestDatabase();
    const target = new URL(database.url);
    proxy = await startTcpProxy(target.hostname, Number(target.port));
    const viaProxy = new URL(database.url);
    viaProxy.port = String(proxy.port);
    const controllers = [ThingsController, PlainController, WholeController, LedgerController];
    const options = { storeTimeout: STORE_TIMEOUT, lease: LEASE };
    app = await bootFixture(viaProxy.toString(), { controllers, platform, options });
    await app.dataSource.query(LEDGER_SCHEMA);
  });
  afterAll(async () => {
    await app?.close();
    await proxy?.close();
    await database?.drop();
  });

  it('fails closed with 503 while the database is unreachable, leaves other routes alone, and recovers by itself', async () => {
    const token = randomUUID();
    const key = randomUUID();
    await proxy.cut();
    try {
      const before = app.probe.count('create');
      const refused = await send(app.url, { path: '/things', headers: authed(token, key), body: { a: 1 } });
      expect(refused.status).toBe(503);
      expect(refused.headers['retry-after']).toBe('1');
      expect(refused.json.error).toMatchObject({ type: 'idempotency_error', code: 'idempotency_store_unavailable', param: null });
      expect(app.probe.count('create')).toBe(before);

      const untouched = await send(app.url, { path: '/plain', headers: authed(token, key) });
      expect(untouched.status).toBe(201);
      const keyless = await send(app.url, { path: '/things', headers: authed(token), body: { a: 1 } });
      expect(keyless.status).toBe(201);
    } finally {
      await proxy.restore();
    }
    let recovered = await send(app.url, { path: '/things', headers: authed(token, key), body: { a: 1 } });
    await waitFor(async () => {
      if (recovered.status === 201) return true;
      recovered = await send(app.url, { path: '/things', headers: authed(token, key), body: { a: 1 } });
      return false;
    });
    const replay = await send(app.url, { path: '/things', headers: authed(token, key), body: { a: 1 } });
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(recovered.body)).toBe(true);
  });

  it('answers 503 idempotency_store_unavailable on a transactional route when its transaction cannot begin, runs no handler, and recovers', async () => {
    const token = randomUUID();
    const key = randomUUID();
    const note = randomUUID();
    const before = app.probe.count('ledger');
    await proxy.cut();
    try {
      for (const headers of [authed(token, key), authed(token)]) {
        const refused = await send(app.url, { path: '/ledger', headers, body: { note } });
        expect(refused.status).toBe(503);
        expect(refused.headers['retry-after']).toBe('1');
        expect(refused.json.error).toMatchObject({ type: 'idempotency_error', code: 'idempotency_store_unavailable', param: null });
      }
      expect(app.probe.count('ledger')).toBe(before);
    } finally {
      await proxy.restore();
    }
    let recovered: WireResponse | undefined;
    await waitFor(async () => {
      recovered = await send(app.url, { path: '/ledger', headers: authed(token, key), body: { note } });
      return recovered.status === 201;
    });
    const replay = await send(app.url, { path: '/ledger', headers: authed(token, key), body: { note } });
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(recovered!.body)).toBe(true);
    expect(app.probe.count('ledger')).toBe(before + 1);
  });

  it('answers 503 within storeTimeout while the database keeps its connections but stops answering', async () => {
    const token = randomUUID();
    const [key, ledgerKey, note] = [randomUUID(), randomUUID(), randomUUID()];
    const before = app.probe.count('create') + app.probe.count('ledger');
    proxy.stall();
    try {
      const timed = async (answer: Promise<WireResponse>) => {
        const started = Date.now();
        return { answer: await answer, ms: Date.now() - started };
      };
      const answers = await Promise.all([
        timed(send(app.url, { path: '/things', headers: authed(token, key), body: { a: 1 } })),
        timed(send(app.url, { path: '/ledger', headers: authed(token, ledgerKey), body: { note } })),
      ]);
      for (const { answer, ms } of answers) {
        expect(answer.status).toBe(503);
        expect(answer.json.error).toMatchObject({ type: 'idempotency_error', code: 'idempotency_store_unavailable' });
        // Far below the minutes a lost TCP connection may take to show.
        expect(ms).toBeLessThan(STORE_TIMEOUT + 1500);
      }
      expect(app.probe.count('create') + app.probe.count('ledger')).toBe(before);
    } finally {
      proxy.resume();
    }
    // A claim that timed out may still reach the database once it answers again: its key is then in
    // flight, and frees itself when the lease ends.
    for (const [path, requestKey, body] of [['/things', key, { a: 1 }], ['/ledger', ledgerKey, { note }]] as const) {
      let first: WireResponse | undefined;
      await waitFor(async () => {
        first = await send(app.url, { path, headers: authed(token, requestKey), body });
        if (first.status !== 201) expect(first.json.error.code).toBe('idempotency_key_in_use');
        return first.status === 201;
      }, LEASE + 5000);
      const replay = await send(app.url, { path, headers: authed(token, requestKey), body });
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(first!.body)).toBe(true);
    }
    expect(app.probe.count('create') + app.probe.count('ledger')).toBe(before + 2);
  });
});
