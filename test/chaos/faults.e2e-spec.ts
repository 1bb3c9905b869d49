// Fault behaviour that the other e2e files do not cover (see test/chaos/README.md for the map):
//   1. a process SIGKILLed while a leased (non-transactional) handler runs leaves a key that answers
//      409 idempotency_key_in_use until the lease ends and runs the handler again after it;
//   2. a real PostgreSQL RESTART (fast shutdown, start again on the same port; not a proxy cut)
//      while the app runs: 503 idempotency_store_unavailable with Retry-After while it is down, the
//      handler not run for those, and recovery without restarting the app, in both modes;
//   3. a lease renewal that lands after the record was completed is not a lost lease.
import { Body, Controller, Headers, type INestApplication, Param, Post, ServiceUnavailableException } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import diagnostics_channel from 'node:diagnostics_channel';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DataSource, type EntityManager } from 'typeorm';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../../sample/embedded-database';
import {
  CreateIdempotencyKeys1764288000000,
  IDEMPOTENCY_CHANNELS,
  Idempotent,
  IdempotencyModule,
  IdempotencyStore,
  IdempotencyTransaction,
  type IdempotencyEvent,
  type RecordOwner,
  type StoredResponse,
} from '../../src';
import { keyHash } from '../../src/log-format';
import { PostgresIdempotencyStore } from '../../src/store/postgres-idempotency.store';
import type { SqlRunner } from '../../src/store/sql-runner';
import { compileEntry, startChildApp, type ChildApp } from '../support/child-app';
import { PLATFORMS, Probe, bootFixture, type FixtureApp, type Platform } from '../support/fixture-app';
import { authed, scopeOf, send, type WireResponse } from '../support/http-client';
import { createTestDatabase, type TestDatabase } from '../support/test-database';
import { waitFor } from '../support/wait-for';
import { EFFECTS_SCHEMA, isConnectivityError } from './effects';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('A process killed while a leased (non-transactional) handler runs', () => {
  const LEASE_MS = 2500;
  let database: TestDatabase;
  let dataSource: DataSource;
  let compiled: string;
  const children: ChildApp[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = await new DataSource({ type: 'postgres', url: database.url, migrations: [CreateIdempotencyKeys1764288000000] }).initialize();
    await dataSource.runMigrations();
    await dataSource.query(EFFECTS_SCHEMA);
    compiled = compileEntry('test/chaos/chaos-app.ts');
  }, 90_000);
  afterAll(async () => {
    for (const child of children) child.process.kill('SIGKILL');
    await dataSource?.destroy();
    await database?.drop();
  });

  const start = async (platform: Platform, env: Record<string, string>) => {
    const child = await startChildApp(compiled, {
      DATABASE_URL: database.url,
      CHAOS_PLATFORM: platform,
      CHAOS_LEASE_MS: String(LEASE_MS),
      ...env,
    });
    children.push(child);
    return child;
  };

  it.each(PLATFORMS)(
    '(%s) answers 409 in_use until the lease of the dead claim ends, then runs the handler on another process and replays that answer',
    async (platform) => {
      const token = `tok_${randomUUID()}`;
      const key = randomUUID();
      const body = { item: 1 };
      const post = (child: ChildApp) => send(child.url, { path: '/effects/leased', headers: authed(token, key), body });
      const [doomed, survivor] = await Promise.all([
        start(platform, { CHAOS_INSTANCE: 'doomed', CHAOS_HANG: '1' }),
        start(platform, { CHAOS_INSTANCE: 'survivor' }),
      ]);
      const effects = async () =>
        (await dataSource.query('SELECT instance FROM effects WHERE scope = $1 AND idem_key = $2 ORDER BY id', [scopeOf(token), key])).map(
          (row: { instance: string }) => row.instance,
        );

      const sentAt = Date.now();
      const lost = post(doomed).then(
        () => 'answered',
        (error: Error) => error.message,
      );
      await doomed.printed(`RUNNING ${key}`);
      const [claim] = await dataSource.query('SELECT fence FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2', [scopeOf(token), key]);
      doomed.process.kill('SIGKILL');
      expect(await lost).toMatch(/socket hang up|ECONNRESET/);
      // The handler ran and its (non-transactional) effect is committed; the claim is in flight.
      expect(await effects()).toEqual(['doomed']);

      const busy = await post(survivor);
      expect(busy.status).toBe(409);
      expect(busy.json.error.code).toBe('idempotency_key_in_use');
      expect(busy.headers['retry-after']).toBe('1');
      expect(await effects()).toEqual(['doomed']);

      // A client retrying as told: in use until the lease runs out, then its retry takes the key over.
      let retry: WireResponse = busy;
      while (retry.status === 409 && Date.now() - sentAt < LEASE_MS + 5000) {
        await sleep(100);
        retry = await post(survivor);
        if (retry.status === 409) expect(retry.json.error.code).toBe('idempotency_key_in_use');
      }
      const tookOverAfter = Date.now() - sentAt;
      expect(retry.status).toBe(201);
      expect(retry.headers['idempotency-replayed']).toBeUndefined();
      expect(retry.json).toMatchObject({ instance: 'survivor', key });
      expect(tookOverAfter).toBeGreaterThanOrEqual(LEASE_MS - 100);
      // Leased mode promises at most one execution per lease, not exactly once: the killed
      // handler's effect stays, the new owner's is the one on record (transactional mode rolls the
      // first one back instead: test/crash.e2e-spec.ts).
      expect(await effects()).toEqual(['doomed', 'survivor']);
      const [record] = await dataSource.query('SELECT fence, response_status FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2', [
        scopeOf(token),
        key,
      ]);
      expect(record).toEqual({ fence: claim.fence + 1, response_status: 201 });

      const replay = await post(survivor);
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(retry.body)).toBe(true);
      expect(await effects()).toEqual(['doomed', 'survivor']);
    },
    30_000,
  );
});

/** Notes written by the handlers below: one row per execution. */
const NOTES_SCHEMA = 'CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, note text NOT NULL)';

/** Handlers that write a note (leased: through the pool; transactional: in the module's transaction), optionally held at a gate. */
@Controller('notes')
class NotesController {
  constructor(
    private readonly probe: Probe,
    private readonly dataSource: DataSource,
  ) {}

  @Post('leased/:gate') @Idempotent()
  leased(@Param('gate') gate: string, @Headers('idempotency-key') key: string, @Body() body: { note: string }) {
    return this.write(`leased:${key}`, gate, body.note, (sql, values) => this.dataSource.query(sql, values));
  }

  @Post('tx/:gate') @Idempotent({ transactional: true })
  tx(@Param('gate') gate: string, @Headers('idempotency-key') key: string, @Body() body: { note: string }, @IdempotencyTransaction() manager: EntityManager) {
    return this.write(`tx:${key}`, gate, body.note, (sql, values) => manager.query(sql, values));
  }

  private async write(run: string, gate: string, note: string, query: (sql: string, values: unknown[]) => Promise<unknown>) {
    this.probe.hit(run);
    try {
      await query('INSERT INTO notes (note) VALUES ($1)', [note]);
    } catch (error) {
      // The host's own answer when its database is gone, as a real API would give it.
      if (isConnectivityError(error)) throw new ServiceUnavailableException('database unavailable');
      throw error;
    }
    this.probe.hit(`${run}:written`);
    if (gate !== 'open') await this.probe.gate(gate).promise;
    return { note, random: randomUUID() };
  }
}

describe('A PostgreSQL restart while the app runs (fast shutdown, start again on the same port)', () => {
  let dataDir: string;
  let server: EmbeddedDatabase;
  let notes: DataSource;
  const apps = new Map<Platform, FixtureApp>();

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'faults-postgres-'));
    server = await startEmbeddedDatabase({ dataDir, persistent: false });
    notes = await new DataSource({ type: 'postgres', url: server.url }).initialize();
    await notes.query(NOTES_SCHEMA);
    // One after the other: both run the migration at boot.
    for (const platform of PLATFORMS) apps.set(platform, await bootFixture(server.url, { controllers: [NotesController], platform, options: { lease: 1500 } }));
  }, 60_000);
  afterAll(async () => {
    for (const app of apps.values()) await app.close().catch(() => undefined);
    await notes?.destroy().catch(() => undefined);
    await server?.stop();
    await rm(dataDir, { recursive: true, force: true });
  });

  // The helper DataSource's own connections die in the restart too; it reconnects by itself.
  const noteCount = async (note: string): Promise<number> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return (await notes.query('SELECT count(*)::int AS n FROM notes WHERE note = $1', [note]))[0].n;
      } catch (error) {
        if (attempt >= 20) throw error;
        await sleep(100);
      }
    }
  };

  describe.each(PLATFORMS)('(%s)', (platform) => {
    const token = `tok_${randomUUID()}`;
    const app = () => apps.get(platform)!;
    // A test that failed while a handler waited on a gate must not leave it hanging into app.close().
    afterEach(() => apps.get(platform)?.probe.openAll());
    const post = (mode: 'leased' | 'tx', key: string, note: string, gate = 'open') =>
      send(app().url, { path: `/notes/${mode}/${gate}`, headers: authed(token, key), body: { note } });

    it('answers 503 idempotency_store_unavailable with Retry-After while PostgreSQL restarts, runs no handler for those, and recovers by itself', async () => {
      const before = { leased: randomUUID(), tx: randomUUID() };
      const stored = { leased: await post('leased', before.leased, before.leased), tx: await post('tx', before.tx, before.tx) };
      expect([stored.leased.status, stored.tx.status]).toEqual([201, 201]);

      // Fresh keys, alternately leased and transactional, every 10 ms while the server restarts.
      const answers: { mode: 'leased' | 'tx'; key: string; answer: WireResponse }[] = [];
      const sent: Promise<unknown>[] = [];
      let restarting = true;
      const restart = server.restart!().finally(() => (restarting = false));
      for (let i = 0; restarting; i++) {
        const mode = i % 2 === 0 ? 'leased' : 'tx';
        const key = randomUUID();
        sent.push(post(mode, key, key).then((answer) => answers.push({ mode, key, answer })));
        await sleep(10);
      }
      await restart;
      await Promise.all(sent);
      // Recovery without restarting the app: new keys succeed in both modes within a few seconds.
      for (const mode of ['leased', 'tx'] as const) {
        let recovered: WireResponse | undefined;
        await waitFor(async () => {
          const key = randomUUID();
          recovered = await post(mode, key, key);
          return recovered.status === 201;
        }, 10_000);
        expect(recovered!.status).toBe(201);
      }

      const unavailable = answers.filter(({ answer }) => answer.status === 503);
      expect(unavailable.length).toBeGreaterThan(0);
      expect(answers.filter(({ answer }) => answer.status >= 500 && answer.status !== 503)).toEqual([]);
      expect(answers.every(({ answer }) => answer.status === 201 || answer.status === 503)).toBe(true);
      for (const { mode, key, answer } of unavailable) {
        if (answer.json?.error?.code !== 'idempotency_store_unavailable') continue; // the host's own 503
        expect(answer.headers['retry-after']).toBe('1');
        expect(answer.json.error).toMatchObject({ type: 'idempotency_error', param: null });
        // Failed closed: a leased request before its claim, so its handler never ran; a transactional
        // one possibly after its handler ran, but then the lost COMMIT took its writes with it.
        if (mode === 'leased') expect(app().probe.count(`${mode}:${key}`)).toBe(0);
        else expect(await noteCount(key)).toBe(0);
      }
      expect(unavailable.some(({ answer }) => answer.json?.error?.code === 'idempotency_store_unavailable')).toBe(true);

      // Each refused request, retried now with its key, runs once and is stored.
      for (const { mode, key } of unavailable.slice(0, 6)) {
        // A leased claim that committed while its answer was lost in the restart holds the key, as
        // in flight, until its lease (1.5 s) ends: the retry is told to wait (409 in_use), then runs.
        let retry!: WireResponse;
        await waitFor(async () => (retry = await post(mode, key, key)).status !== 409, 5_000);
        expect(retry.status).toBe(201);
        expect(retry.headers['idempotency-replayed']).toBeUndefined();
        expect(await noteCount(key)).toBe(1);
        expect((await post(mode, key, key)).headers['idempotency-replayed']).toBe('true');
      }
      // What was stored before the restart is still replayed after it.
      for (const mode of ['leased', 'tx'] as const) {
        const replay = await post(mode, before[mode], before[mode]);
        expect(replay.headers['idempotency-replayed']).toBe('true');
        expect(replay.body.equals(stored[mode].body)).toBe(true);
      }
    }, 30_000);

    it('completes a leased request whose handler was running across the restart: stored once, replayed after', async () => {
      const key = randomUUID();
      const gate = `leased-across-${key}`;
      const pending = post('leased', key, key, gate);
      // Once its note is written: a restart that cut the INSERT itself would fail the handler.
      await waitFor(() => app().probe.count(`leased:${key}:written`) === 1);
      await server.restart!();
      app().probe.gate(gate).open();
      const answer = await pending;
      expect(answer.status).toBe(201);
      const replay = await post('leased', key, key, gate);
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(answer.body)).toBe(true);
      expect(app().probe.count(`leased:${key}`)).toBe(1);
      expect(await noteCount(key)).toBe(1);
    }, 30_000);

    // SPEC W13 over §4's 500 for a failed COMMIT: when the transaction's connection was cut by the
    // restart, the database could not be reached; the client is told to retry (503 + Retry-After),
    // not that the server failed (500 internal_error). Nothing committed, so the retry runs anew.
    it('answers 503 idempotency_store_unavailable, not 500, when the restart cut the transaction before COMMIT; the retry runs once', async () => {
      const key = randomUUID();
      const gate = `tx-across-${key}`;
      const pending = post('tx', key, key, gate);
      await waitFor(() => app().probe.count(`tx:${key}:written`) === 1);
      await server.restart!();
      app().probe.gate(gate).open();
      const answer = await pending;
      expect(await noteCount(key)).toBe(0);
      expect({ status: answer.status, code: answer.json?.error?.code, retryAfter: answer.headers['retry-after'] }).toEqual({
        status: 503,
        code: 'idempotency_store_unavailable',
        retryAfter: '1',
      });
      let retry: WireResponse | undefined;
      await waitFor(async () => (retry = await post('tx', key, key, gate)).status !== 503, 10_000);
      expect(retry!.status).toBe(201);
      expect(retry!.headers['idempotency-replayed']).toBeUndefined();
      expect(await noteCount(key)).toBe(1);
    }, 30_000);
  });
});

/** The real store, except that a renewal waits until the record was completed: a renewal overtaken by the completion. */
class OvertakenRenewalStore extends PostgresIdempotencyStore {
  renewals = 0;
  private readonly completions = new Map<string, { promise: Promise<void>; resolve: () => void }>();

  private completion(key: string) {
    let entry = this.completions.get(key);
    if (!entry) {
      let resolve!: () => void;
      const promise = new Promise<void>((done) => (resolve = done));
      this.completions.set(key, (entry = { promise, resolve }));
    }
    return entry;
  }

  override async renew(owner: RecordOwner, lease: number): Promise<boolean> {
    this.renewals++;
    await this.completion(owner.key).promise;
    return super.renew(owner, lease);
  }

  override async complete(owner: RecordOwner, response: StoredResponse, run?: SqlRunner): Promise<boolean> {
    const stored = await super.complete(owner, response, run);
    this.completion(owner.key).resolve();
    return stored;
  }
}

@Controller('held')
class HeldController {
  constructor(private readonly probe: Probe) {}

  @Post(':gate') @Idempotent()
  async held(@Param('gate') gate: string) {
    this.probe.hit(gate);
    await this.probe.gate(gate).promise;
    return { gate, random: randomUUID() };
  }
}

describe('A lease renewal still in flight when the handler finishes', () => {
  let database: TestDatabase;
  let app: INestApplication;
  let url: string;
  let store: OvertakenRenewalStore;

  beforeAll(async () => {
    database = await createTestDatabase();
    const moduleRef = await Test.createTestingModule({
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url: database.url, autoLoadEntities: true, migrations: [CreateIdempotencyKeys1764288000000], migrationsRun: true }),
        IdempotencyModule.forRoot({ lease: 300 }),
      ],
      controllers: [HeldController],
      providers: [Probe],
    })
      .overrideProvider(IdempotencyStore)
      .useFactory({ factory: (dataSource: DataSource) => new OvertakenRenewalStore(dataSource), inject: [DataSource] })
      .compile();
    app = moduleRef.createNestApplication({ logger: false });
    await app.listen(0, '127.0.0.1');
    url = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
    store = app.get(IdempotencyStore);
  });
  // A test that failed while a handler waited on a gate must not leave it hanging into app.close().
  afterEach(() => app?.get(Probe).openAll());
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });

  // The renewal's UPDATE finds the record completed (response_status is set) and matches no row:
  // that is the success it raced with, not a takeover. Reporting it publishes a false
  // idempotency:lease_lost and logs "another request took it over; this response will not be
  // stored" for a response that was stored.
  it('publishes no lease_lost and logs no takeover for a record it completed itself', async () => {
    const token = `tok_${randomUUID()}`;
    const key = randomUUID();
    const gate = `held-${key}`;
    const mine = keyHash(scopeOf(token), key);
    const lost: IdempotencyEvent[] = [];
    const onLost = (message: unknown) => {
      if ((message as IdempotencyEvent).keyHash === mine) lost.push(message as IdempotencyEvent);
    };
    diagnostics_channel.subscribe(IDEMPOTENCY_CHANNELS.lease_lost, onLost);
    try {
      const pending = send(url, { path: `/held/${gate}`, headers: authed(token, key) });
      // Held until at least one renewal has started (every lease / 3 = 100 ms).
      await waitFor(() => store.renewals >= 1);
      app.get(Probe).gate(gate).open();
      const answer = await pending;
      expect(answer.status).toBe(201);
      const replay = await send(url, { path: `/held/${gate}`, headers: authed(token, key) });
      expect(replay.headers['idempotency-replayed']).toBe('true');
      expect(replay.body.equals(answer.body)).toBe(true);
      // Let the overtaken renewal settle.
      await sleep(200);
      expect(lost).toEqual([]);
    } finally {
      diagnostics_channel.unsubscribe(IDEMPOTENCY_CHANNELS.lease_lost, onLost);
    }
  });
});
