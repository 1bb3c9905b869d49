import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../sample/embedded-database';
import { IdempotencyStore, type IdempotencyModuleOptions } from '../src';
import type { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import { PLATFORMS, PlainController, ThingsController, bootFixture, type FixtureApp } from './support/fixture-app';
import { authed, send, type WireResponse } from './support/http-client';
import { LEDGER_SCHEMA, LedgerController } from './support/ledger-controller';
import { startPgBouncer, terminateServerConnections, type PgBouncer } from './support/pgbouncer';
import { waitFor } from './support/wait-for';

const STORE_TIMEOUT = 2000;
// What an answer may take beyond storeTimeout on a busy machine: far below PgBouncer's own waits.
const SLACK = 1500;
const LEASE = 1500;
const UNAVAILABLE = { type: 'idempotency_error', code: 'idempotency_store_unavailable', param: null };
const OPTIONS: IdempotencyModuleOptions = { preparedStatements: false, storeTimeout: STORE_TIMEOUT, lease: LEASE };

// Through PgBouncer in transaction mode with 4 server connections, on a PostgreSQL of this file's
// own (the tests stop it): a request that meets a fault answers promptly, with its own answer or a
// 503 envelope; a retry never gets another request's answer, and no key stays taken longer than
// its lease.
describe('Faults through PgBouncer in transaction mode', () => {
  let dataDir: string;
  let server: EmbeddedDatabase;
  let bouncer: PgBouncer;

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'pgbouncer-faults-'));
    server = await startEmbeddedDatabase({ dataDir });
    bouncer = await startPgBouncer(server.url, { poolMode: 'transaction', poolSize: 4 });
  }, 60_000);
  afterAll(async () => {
    await bouncer?.close();
    await server?.stop();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** A new database on this file's server, and its URL through PgBouncer. */
  const createDatabase = async () => {
    const name = `faults_${randomUUID().replaceAll('-', '')}`;
    const client = new pg.Client({ connectionString: server.url });
    await client.connect();
    try {
      await client.query(`CREATE DATABASE ${name}`);
    } finally {
      await client.end();
    }
    const url = new URL(server.url);
    url.pathname = `/${name}`;
    return { name, url: bouncer.via(url.toString()) };
  };

  describe.each(PLATFORMS)('(%s)', (platform) => {
    let app: FixtureApp;
    let database: string;
    let token: string;

    beforeAll(async () => {
      const created = await createDatabase();
      database = created.name;
      const controllers = [ThingsController, PlainController, LedgerController];
      app = await bootFixture(created.url, { controllers, platform, options: OPTIONS });
      await app.dataSource.query(LEDGER_SCHEMA);
    });
    afterAll(async () => {
      await app?.close();
    });
    beforeEach(() => {
      token = `tok_${randomUUID()}`;
    });
    afterEach(() => app?.probe.openAll());

    const post = (route: string, key?: string, body: unknown = { n: 1 }) =>
      send(app.url, { path: route, headers: authed(token, key), body });
    /** The answer and how long it took. */
    const timed = async (answer: Promise<WireResponse>) => {
      const started = Date.now();
      return { answer: await answer, ms: Date.now() - started };
    };
    const expectUnavailable = (answer: WireResponse) => {
      expect(answer.status).toBe(503);
      expect(answer.headers['retry-after']).toBe('1');
      expect(answer.json.error).toMatchObject(UNAVAILABLE);
    };
    /**
     * A request that met a fault gets its own answer or a 503 envelope. A transactional handler's
     * own statement may lose its connection too: the handler fails, and the app's 500 is not stored.
     */
    const expectAnswered = (route: string, answer: WireResponse) => {
      expect(route.startsWith('/ledger') ? [201, 500, 503] : [201, 503]).toContain(answer.status);
      if (answer.status === 503) expectUnavailable(answer);
    };
    /** Sends the request until it is answered 201 (first-hand or replayed); a key stays taken at most a lease. */
    const untilCreated = async (route: string, key: string, body: unknown) => {
      let answer: WireResponse | undefined;
      await waitFor(async () => {
        answer = await post(route, key, body);
        return answer.status === 201;
      }, 15_000);
      return answer!;
    };
    /**
     * A key's retries get its first answer byte for byte once that answer was stored: always for a
     * transactional 201 (it commits before it leaves), and for a leased 201 unless storing it failed
     * (then the key stays taken until its lease ends and runs again). Else the request runs now.
     */
    const expectRetryConsistent = async (route: string, key: string, body: unknown, first: WireResponse) => {
      const [record] = await app.dataSource.query(
        'SELECT response_status FROM idempotency_keys WHERE idem_key = $1',
        [key],
      );
      const stored = first.status === 201 && record?.response_status === 201;
      if (first.status === 201 && route.startsWith('/ledger')) expect(stored).toBe(true);
      const retry = await untilCreated(route, key, body);
      if (stored) {
        expect(retry.headers['idempotency-replayed']).toBe('true');
        expect(retry.body.equals(first.body)).toBe(true);
      }
      const again = await post(route, key, body);
      expect(again.headers['idempotency-replayed']).toBe('true');
      expect(again.body.equals(retry.body)).toBe(true);
    };
    const ledgerRows = async (note: string) =>
      Number((await app.dataSource.query('SELECT count(*) AS n FROM ledger WHERE note = $1', [note]))[0].n);

    it('answers 503 within storeTimeout while PostgreSQL is stopped behind PgBouncer, and recovers', async () => {
      const recordedKey = randomUUID();
      const recorded = await post('/things', recordedKey);
      expect(recorded.status).toBe(201);
      const key = randomUUID();
      const ledgerKey = randomUUID();
      const note = randomUUID();
      const before = app.probe.count('create') + app.probe.count('ledger');
      await server.stop();
      try {
        const answers = await Promise.all([
          timed(post('/things', key)),
          timed(post('/things', recordedKey)),
          timed(post('/ledger', ledgerKey, { note })),
          timed(post('/ledger', undefined, { note })),
        ]);
        for (const { answer, ms } of answers) {
          expectUnavailable(answer);
          expect(ms).toBeLessThan(STORE_TIMEOUT + SLACK);
        }
        expect(app.probe.count('create') + app.probe.count('ledger')).toBe(before);
        expect((await post('/plain', key)).status).toBe(201);
      } finally {
        server = await startEmbeddedDatabase({ dataDir, port: server.port });
      }
      const replay = await untilCreated('/things', recordedKey, { n: 1 });
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(recorded.body)).toBe(true);
      await expectRetryConsistent('/things', key, { n: 1 }, await untilCreated('/things', key, { n: 1 }));
      await expectRetryConsistent('/ledger', ledgerKey, { note }, await untilCreated('/ledger', ledgerKey, { note }));
      expect(await ledgerRows(note)).toBe(1);
    });

    it('answers requests across a PgBouncer restart with their answer or a 503, retries consistently', async () => {
      const leasedKey = randomUUID();
      const transactionalKey = randomUUID();
      const note = randomUUID();
      const gate = `restart-${leasedKey}`;
      const leased = post(`/things/slow/${gate}`, leasedKey);
      const transactional = post(`/ledger/slow/${gate}`, transactionalKey, { note });
      await waitFor(() => app.probe.count(`slow:${gate}`) === 1 && app.probe.count(`ledger-slow:${gate}`) === 1);
      await bouncer.restart();
      const fresh = await timed(post('/things', randomUUID()));
      expectAnswered('/things', fresh.answer);
      expect(fresh.ms).toBeLessThan(STORE_TIMEOUT + SLACK);
      app.probe.gate(gate).open();
      const [leasedAnswer, transactionalAnswer] = await Promise.all([leased, transactional]);
      expectAnswered('/things', leasedAnswer);
      expectAnswered('/ledger', transactionalAnswer);
      await expectRetryConsistent(`/things/slow/${gate}`, leasedKey, { n: 1 }, leasedAnswer);
      await expectRetryConsistent(`/ledger/slow/${gate}`, transactionalKey, { note }, transactionalAnswer);
      expect(await ledgerRows(note)).toBe(1);
    });

    it('answers 503 within storeTimeout while every server connection is held, then serves the keys', async () => {
      const holders = Array.from({ length: 4 }, () => ({ key: randomUUID(), note: randomUUID() }));
      const gate = `exhausted-${holders[0].key}`;
      // Each open transaction holds one of PgBouncer's 4 server connections until the gate opens.
      const held = holders.map(({ key, note }) => post(`/ledger/slow/${gate}`, key, { note }));
      await waitFor(() => app.probe.count(`ledger-slow:${gate}`) === holders.length);
      const key = randomUUID();
      const ledgerKey = randomUUID();
      const note = randomUUID();
      const waiting = await Promise.all([timed(post('/things', key)), timed(post('/ledger', ledgerKey, { note }))]);
      app.probe.gate(gate).open();
      for (const { answer, ms } of waiting) {
        expectUnavailable(answer);
        expect(ms).toBeLessThan(STORE_TIMEOUT + SLACK);
      }
      for (const answer of await Promise.all(held)) expect(answer.status).toBe(201);
      await expectRetryConsistent('/things', key, { n: 1 }, await untilCreated('/things', key, { n: 1 }));
      await expectRetryConsistent('/ledger', ledgerKey, { note }, await untilCreated('/ledger', ledgerKey, { note }));
      expect(await ledgerRows(note)).toBe(1);
    });

    it('answers 503 or the right answer when server connections are killed, retries consistently', async () => {
      const recordedKey = randomUUID();
      const recorded = await post('/things', recordedKey);
      const gate = `killed-${recordedKey}`;
      const heldKey = randomUUID();
      const heldNote = randomUUID();
      const heldTransaction = post(`/ledger/slow/${gate}`, heldKey, { note: heldNote });
      await waitFor(() => app.probe.count(`ledger-slow:${gate}`) === 1);
      // Fresh keys, leased and transactional, on their way while the connections go.
      const burst = Array.from({ length: 16 }, (_, i) => {
        const route = i % 2 === 0 ? '/things' : '/ledger';
        const key = randomUUID();
        const body = { note: randomUUID() };
        return { route, key, body, answer: post(route, key, body) };
      });
      expect(await terminateServerConnections(server.url, database)).toBeGreaterThan(0);
      app.probe.gate(gate).open();
      const replay = await post('/things', recordedKey);
      expectAnswered('/things', replay);
      if (replay.status === 201) expect(replay.body.equals(recorded.body)).toBe(true);
      const held = await heldTransaction;
      expectAnswered('/ledger', held);
      await expectRetryConsistent(`/ledger/slow/${gate}`, heldKey, { note: heldNote }, held);
      expect(await ledgerRows(heldNote)).toBe(1);
      for (const { route, key, body, answer } of burst) {
        const first = await answer;
        expectAnswered(route, first);
        await expectRetryConsistent(route, key, body, first);
      }
    });
  });

  describe('a store left with prepared statements', () => {
    const title = 'answers every request right while it finds out it runs behind the pooler, then goes unnamed (%s)';
    it.each(PLATFORMS)(title, async (platform) => {
      const { url } = await createDatabase();
      const options = { ...OPTIONS, preparedStatements: true };
      const app = await bootFixture(url, { controllers: [ThingsController], platform, options });
      const store = app.app.get(IdempotencyStore) as PostgresIdempotencyStore;
      const token = `tok_${randomUUID()}`;
      const post = (key: string, round: number) =>
        send(app.url, { path: '/things', headers: authed(token, key), body: { round } });
      try {
        for (let round = 0; round < 20 && store.preparedStatements; round++) {
          const keys = Array.from({ length: 12 }, () => randomUUID());
          const firsts = await Promise.all(keys.map((key) => post(key, round)));
          for (const answer of firsts) expect(answer.status).toBe(201);
          const replays = await Promise.all(keys.map((key) => post(key, round)));
          replays.forEach((replay, index) => {
            expect(replay.headers['idempotency-replayed']).toBe('true');
            expect(replay.body.equals(firsts[index].body)).toBe(true);
          });
        }
        expect(store.preparedStatements).toBe(false);
      } finally {
        await app.close();
      }
    });
  });
});
