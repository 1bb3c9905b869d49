import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import type { INestApplication } from '@nestjs/common';
import { PLATFORMS, Probe, ThingsController, bootFixture, type FixtureApp } from './support/fixture-app';
import { hangUp } from './support/hang-up';
import { authed, scopeOf, send } from './support/http-client';
import { LEDGER_SCHEMA } from './support/ledger-controller';
import { HeldController, TIMEOUT_MS, TimedController, TornController } from './support/pipeline-controllers';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// The module inside an ordinary Nest pipeline: interceptors around its routes that hold or replace
// the handler's answer, and clients that leave while it runs. A key is never freed while its handler
// may still run or its answer may still be written, and a transaction always ends with its request.
describe.each(PLATFORMS)('Idempotent routes inside the whole pipeline (%s)', (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;
  let server: Server;
  let token: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    const controllers = [HeldController, TimedController, TornController];
    app = await bootFixture(database.url, { controllers, platform, options: { lease: 2000 } });
    await app.dataSource.query(LEDGER_SCHEMA);
    server = app.app.getHttpServer();
  });
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });
  beforeEach(() => {
    token = `tok_${randomUUID()}`;
  });
  afterEach(() => app?.probe.openAll());

  const post = (path: string, key: string, body: unknown = {}) => send(app.url, { path, headers: authed(token, key), body });
  const record = async (key: string) => (await app.dataSource.query('SELECT * FROM idempotency_keys WHERE idem_key = $1', [key]))[0];
  const ledgerRows = async (note: string) => Number((await app.dataSource.query('SELECT count(*) AS n FROM ledger WHERE note = $1', [note]))[0].n);
  /** The key's record is in flight and its lease is over (released, or no longer renewed). */
  const leaseLapsed = async (key: string) =>
    (
      await app.dataSource.query(
        'SELECT lease_expires_at <= now() AS lapsed FROM idempotency_keys WHERE idem_key = $1 AND response_status IS NULL',
        [key],
      )
    )[0]?.lapsed === true;
  const idleInTransaction = async () =>
    Number(
      (
        await app.dataSource.query(
          `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`,
        )
      )[0].n,
    );

  it('keeps the key of a client that left while an outer interceptor still holds the answer, then stores that answer', async () => {
    const key = randomUUID();
    const gate = `held-${key}`;
    await hangUp(server, { path: `/held/${gate}`, headers: authed(token, key), leaveWhen: () => app.probe.count(`held:${gate}`) === 1 });
    const duplicate = post(`/held/${gate}`, key);
    await sleep(300);
    expect(app.probe.count(`held:${gate}`)).toBe(1);
    app.probe.gate(`after:${gate}`).open();
    const busy = await duplicate;
    expect(busy.status).toBe(409);
    expect(busy.json.error.code).toBe('idempotency_key_in_use');
    await waitFor(async () => (await record(key))?.response_status === 201);
    const retry = await post(`/held/${gate}`, key);
    expect(retry.headers['idempotency-replayed']).toBe('true');
    expect(retry.json).toEqual({ n: 1 });
  });

  it('stops renewing the lease of a client that left when the pipeline never answers, so the key frees itself', async () => {
    const key = randomUUID();
    const gate = `never-${key}`;
    await hangUp(server, { path: `/held/${gate}`, headers: authed(token, key), leaveWhen: () => app.probe.count(`held:${gate}`) === 1 });
    // The outer interceptor's gate stays shut: no answer ever comes. Renewals come every third of the 2 s lease.
    await sleep(3000);
    expect(await leaseLapsed(key)).toBe(true);
  });

  /** Holds the app's claim of `key` behind an uncommitted record of it until `release()`. */
  const holdClaim = async (key: string) => {
    const blocker = app.dataSource.createQueryRunner();
    await blocker.connect();
    await blocker.startTransaction();
    await blocker.query(
      `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at)
       VALUES ($1, $2, 'blocker', 1, now(), now() + interval '1 hour', now())`,
      [scopeOf(token), key],
    );
    return {
      claimWaits: async () =>
        Number(
          (
            await app.dataSource.query(
              `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
            )
          )[0].n,
        ) === 1,
      release: async () => {
        await blocker.rollbackTransaction();
        await blocker.release();
      },
    };
  };

  it('frees the key of a client that left while its key was being claimed, once Nest tore its Observable handler down', async () => {
    const key = randomUUID();
    const gate = `claim-${key}`;
    const held = await holdClaim(key);
    try {
      await hangUp(server, { path: `/torn/leased/${gate}`, headers: authed(token, key), leaveWhen: held.claimWaits });
    } finally {
      await held.release();
    }
    // Released at once: sooner than its 2 s lease could lapse by itself.
    await waitFor(() => leaseLapsed(key), 1500);
    expect(app.probe.count(`torn-leased:${gate}`)).toBe(1);
  });

  it.each(['leased', 'transactional'])(
    'ends a %s claim that succeeds after a timeout interceptor already answered: the handler never runs, nothing stays open',
    async (mode) => {
      const key = randomUUID();
      const gate = `late-claim-${key}`;
      const path = mode === 'leased' ? `/timed/${gate}` : `/timed/ledger/${gate}`;
      const held = await holdClaim(key);
      let answer;
      try {
        const pending = post(path, key, { note: key });
        await waitFor(held.claimWaits);
        answer = await pending;
      } finally {
        await held.release();
      }
      expect(answer.status).toBe(408);
      // The claim goes through once the blocker is gone; then it must be undone at once.
      await waitFor(async () => (await record(key)) === undefined || (await leaseLapsed(key)), 1500);
      await waitFor(async () => (await idleInTransaction()) === 0, 1500);
      app.probe.gate(gate).open();
      const retry = await post(path, key, { note: key });
      expect(retry.status).toBe(201);
      expect(app.probe.count(`${mode === 'leased' ? 'timed' : 'timed-ledger'}:${gate}`)).toBe(1);
    },
  );

  it('commits the transaction of a client that left while an outer interceptor still held the answer', async () => {
    const key = randomUUID();
    const gate = `held-ledger-${key}`;
    const note = randomUUID();
    await hangUp(server, {
      path: `/held/ledger/${gate}`,
      headers: authed(token, key),
      body: { note },
      leaveWhen: () => app.probe.count(`held-ledger:${gate}`) === 1,
    });
    app.probe.gate(`after:${gate}`).open();
    await waitFor(async () => (await record(key))?.response_status === 201);
    expect(await ledgerRows(note)).toBe(1);
    const retry = await post(`/held/ledger/${gate}`, key, { note });
    expect(retry.headers['idempotency-replayed']).toBe('true');
    expect(await ledgerRows(note)).toBe(1);
  });

  it('keeps the key while a handler outlives a timeout interceptor, never replays the 408, and never runs it twice', async () => {
    const key = randomUUID();
    const gate = `timed-${key}`;
    const first = await post(`/timed/${gate}`, key);
    expect(first.status).toBe(408);
    const during = await post(`/timed/${gate}`, key);
    expect(during.status).toBe(409);
    expect(during.json.error.code).toBe('idempotency_key_in_use');
    app.probe.gate(gate).open();
    await waitFor(async () => (await record(key))?.response_status !== null);
    const after = await post(`/timed/${gate}`, key);
    expect(after.status).toBe(409);
    expect(after.json.error.code).toBe('idempotency_response_not_stored');
    expect(app.probe.count(`timed:${gate}`)).toBe(1);
  });

  it('commits none of the writes of a transactional handler that a timeout interceptor answered for, and runs the retry', async () => {
    const key = randomUUID();
    const gate = `timed-ledger-${key}`;
    const note = randomUUID();
    const first = await post(`/timed/ledger/${gate}`, key, { note });
    expect(first.status).toBe(408);
    expect(first.headers['idempotency-replayed']).toBeUndefined();
    // The handler goes on to its second write, on a transaction that is no longer there.
    app.probe.gate(gate).open();
    await sleep(TIMEOUT_MS);
    expect(await ledgerRows(note)).toBe(0);
    expect(await record(key)).toBeUndefined();
    const retry = await post(`/timed/ledger/${gate}`, key, { note });
    expect(retry.status).toBe(201);
    expect(await ledgerRows(note)).toBe(2);
    expect(app.probe.count(`timed-ledger:${gate}`)).toBe(2);
  });

  it.each(['observable', 'stream'])(
    'ends the transaction of a %s handler whose client left: no session stays idle in transaction, and the retry commits once',
    async (kind) => {
      const key = randomUUID();
      const gate = `torn-${kind}-${key}`;
      const note = randomUUID();
      await hangUp(server, {
        path: `/torn/${kind}/${gate}`,
        headers: authed(token, key),
        body: { note },
        // A stream has begun to be sent by then.
        leaveWhen: async () => app.probe.count(`torn-${kind}:${gate}`) === 1 && (await sleep(100)) === undefined,
      });
      await waitFor(async () => (await idleInTransaction()) === 0);
      app.probe.gate(gate).open();
      const retry = await post(`/torn/${kind}/${gate}`, key, { note });
      expect(retry.status).toBe(201);
      expect(await ledgerRows(note)).toBe(1);
      const replay = await post(`/torn/${kind}/${gate}`, key, { note });
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(retry.body)).toBe(true);
    },
  );
});

// A Fastify hook that still works after the handler settled (as @fastify/compress's onSend does).
describe('Idempotent routes behind an async Fastify onSend hook', () => {
  let database: TestDatabase;
  let app: FixtureApp;
  const token = `tok_${randomUUID()}`;

  beforeAll(async () => {
    database = await createTestDatabase();
    const holdOnSend = (nest: INestApplication) => {
      const probe = nest.get(Probe);
      nest.getHttpAdapter().getInstance().addHook('onSend', async (request: { headers: Record<string, string> }, _reply: unknown, payload: unknown) => {
        const gate = request.headers['x-hold'];
        if (gate) await probe.gate(gate).promise;
        return payload;
      });
    };
    const controllers = [ThingsController, TimedController];
    app = await bootFixture(database.url, { controllers, platform: 'fastify', configure: holdOnSend });
    await app.dataSource.query(LEDGER_SCHEMA);
  });
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });
  afterEach(() => app?.probe.openAll());

  it('keeps the key of a client that left while the hook held the answer, then stores that answer', async () => {
    const key = randomUUID();
    const gate = `onsend-${key}`;
    const headers = authed(token, key, [['x-hold', gate]]);
    await hangUp(app.app.getHttpServer(), { path: '/things', headers, leaveWhen: () => app.probe.count('create') === 1 });
    const duplicate = send(app.url, { path: '/things', headers: authed(token, key), body: {} });
    await sleep(300);
    expect(app.probe.count('create')).toBe(1);
    app.probe.gate(gate).open();
    expect((await duplicate).status).toBe(409);
    await waitFor(async () => (await app.dataSource.query('SELECT response_status FROM idempotency_keys WHERE idem_key = $1', [key]))[0]?.response_status === 201);
    const retry = await send(app.url, { path: '/things', headers: authed(token, key), body: {} });
    expect(retry.headers['idempotency-replayed']).toBe('true');
    expect(retry.json.created).toBe(1);
  });

  it.each(['leased', 'transactional'])(
    'never takes for the %s handler\'s answer a timeout\'s 408 the hook held until after the handler ended',
    async (mode) => {
      const key = randomUUID();
      const gate = `late-408-${key}`;
      const note = randomUUID();
      const path = mode === 'leased' ? `/timed/${gate}` : `/timed/ledger/${gate}`;
      const headers = authed(token, key, [['x-hold', `hook-${gate}`]]);
      const first = send(app.url, { path, headers, body: { note } });
      // The timeout answers in the handler's place; the hook holds that answer while the handler ends.
      await sleep(TIMEOUT_MS + 200);
      app.probe.gate(gate).open();
      await sleep(200);
      app.probe.gate(`hook-${gate}`).open();
      expect((await first).status).toBe(408);
      const retry = await send(app.url, { path, headers: authed(token, key), body: { note } });
      expect(retry.headers['idempotency-replayed']).toBeUndefined();
      const ledger = await app.dataSource.query('SELECT count(*)::int AS n FROM ledger WHERE note = $1', [note]);
      if (mode === 'leased') {
        expect(retry.status).toBe(409);
        expect(retry.json.error.code).toBe('idempotency_response_not_stored');
      } else {
        // None of the first run's writes committed: the retry ran and wrote its own two.
        expect(retry.status).toBe(201);
        expect(ledger[0].n).toBe(2);
      }
    },
  );
});
