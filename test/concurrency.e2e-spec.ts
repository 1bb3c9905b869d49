import { randomUUID } from 'node:crypto';
import { request as httpRequest, type Server } from 'node:http';
import net from 'node:net';
import { fingerprintRequest } from '../src/fingerprint';
import { IdempotencyStore } from '../src';
import type { ClaimRequest } from '../src/store/idempotency.store';
import { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import type { SqlRunner } from '../src/store/sql-runner';
import { PLATFORMS, claimOpening, startFixtureApp, type FixtureApp } from './support/fixture-app';
import { authed, scopeOf, send, type WireResponse } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

// W9, W12 and the lease/fencing rules of SPEC §3: several requests, several instances, faults.
describe.each(PLATFORMS)('Concurrency, leases and faults (%s)', (platform) => {
  let database: TestDatabase;
  let first: FixtureApp;
  let second: FixtureApp;
  let token: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    // Two instances of the app on one database, as behind a load balancer; short leases so the
    // renewal and takeover paths run within a test.
    first = await startFixtureApp(database.url, { lease: 400 }, platform);
    second = await startFixtureApp(database.url, { lease: 400 }, platform);
  });
  afterAll(async () => {
    await first?.close();
    await second?.close();
    await database?.drop();
  });
  beforeEach(() => {
    token = `tok_${randomUUID()}`;
  });
  // A test that failed while a handler waited on a gate must not leave it hanging into app.close().
  afterEach(() => {
    first?.probe.openAll();
    second?.probe.openAll();
  });

  const post = (app: FixtureApp, path: string, key: string, body?: unknown) => send(app.url, { path, headers: authed(token, key), body });
  const row = async (key: string) =>
    (await first.dataSource.query('SELECT * FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2', [scopeOf(token), key]))[0];
  const handlerRuns = (name: string) => first.probe.count(name) + second.probe.count(name);

  it('runs the handler exactly once for 50 concurrent requests with one key across two instances', async () => {
    const key = randomUUID();
    const before = handlerRuns('create');
    const answers = await Promise.all(
      Array.from({ length: 50 }, (_, i) => post(i % 2 === 0 ? first : second, '/things', key, { burst: true })),
    );
    expect(handlerRuns('create')).toBe(before + 1);
    const created = answers.filter((answer) => answer.status === 201);
    const busy = answers.filter((answer) => answer.status === 409);
    expect(created.length + busy.length).toBe(50);
    for (const answer of busy) expect(answer.json.error.code).toBe('idempotency_key_in_use');
    // Every 201 is the one response, first-hand or replayed.
    const bodies = new Set(created.map((answer) => answer.body.toString('hex')));
    expect(bodies.size).toBe(1);
    expect(created.filter((answer) => answer.headers['idempotency-replayed'] !== 'true')).toHaveLength(1);
    const replay = await post(second, '/things', key, { burst: true });
    expect(replay.body.toString('hex')).toBe([...bodies][0]);
  });

  it('answers 409 in_use on the other instance while the first request is held, then replays its answer there', async () => {
    const key = randomUUID();
    const gate = `hold-${key}`;
    const pending = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const busy = await post(second, `/things/slow/${gate}`, key);
    expect(busy.status).toBe(409);
    expect(busy.json.error.code).toBe('idempotency_key_in_use');
    expect(busy.headers['retry-after']).toBe('1');
    first.probe.gate(gate).open();
    second.probe.gate(gate).open();
    const done = await pending;
    const replay = await post(second, `/things/slow/${gate}`, key);
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(done.body)).toBe(true);
    expect(second.probe.count(`slow:${gate}`)).toBe(0);
  });

  it('renews the lease while the handler runs: no takeover after several lease periods', async () => {
    const key = randomUUID();
    const gate = `renew-${key}`;
    const pending = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const claimedFence = (await row(key)).fence;
    await new Promise((resolve) => setTimeout(resolve, 1400)); // 3.5 leases of 400 ms
    const busy = await post(second, `/things/slow/${gate}`, key);
    expect(busy.status).toBe(409);
    expect(second.probe.count(`slow:${gate}`)).toBe(0);
    first.probe.gate(gate).open();
    expect((await pending).status).toBe(201);
    expect((await row(key)).fence).toBe(claimedFence);
  });

  it('lets a retry take over a claim whose owner died, once its lease ran out', async () => {
    const key = randomUUID();
    const body = { crashed: true };
    // What a process killed mid-request leaves behind: an in-flight record nobody renews.
    const fingerprint = fingerprintRequest({ method: 'POST', url: '/things', hasBody: true, body });
    await first.dataSource.query(
      `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at)
       VALUES ($1, $2, $3, 1, now() - interval '1 second', now() + interval '1 hour', now())`,
      [scopeOf(token), key, fingerprint],
    );
    const conflicting = await post(first, '/things', key, { crashed: 'differently' });
    expect(conflicting.status).toBe(409);
    expect(conflicting.json.error.code).toBe('idempotency_key_conflict');
    const retry = await post(first, '/things', key, body);
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotency-replayed']).toBeUndefined();
    const record = await row(key);
    expect(record.fence).toBe(2);
    expect(record.response_status).toBe(201);
  });

  it('never lets a handler that lost its claim overwrite the new owner (fencing)', async () => {
    const key = randomUUID();
    const gate = `fence-${key}`;
    const late = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const lateFence = (await row(key)).fence;
    // Simulate a stalled owner: its lease runs out without renewal and a retry takes the key.
    await first.dataSource.query(`UPDATE idempotency_keys SET lease_expires_at = now() - interval '1 second' WHERE api_key_id = $1 AND idem_key = $2`, [scopeOf(token), key]);
    const takeover = post(second, `/things/slow/${gate}`, key);
    await waitFor(() => second.probe.count(`slow:${gate}`) === 1);
    first.probe.gate(gate).open();
    const lateAnswer = await late;
    expect(lateAnswer.status).toBe(201);
    expect((await row(key)).response_status).toBeNull();
    second.probe.gate(gate).open();
    const ownerAnswer = await takeover;
    const replay = await post(first, `/things/slow/${gate}`, key);
    expect(replay.body.equals(ownerAnswer.body)).toBe(true);
    expect(replay.body.equals(lateAnswer.body)).toBe(false);
    expect((await row(key)).fence).toBe(lateFence + 1);
  });

  it('checks the fencing token on renew, complete and release in the store', async () => {
    const store = first.app.get(IdempotencyStore);
    const id = { scope: scopeOf(token), key: randomUUID(), fingerprint: 'f'.repeat(64), ttl: 60_000 };
    const old = await store.claim({ ...id, lease: 1 });
    expect(old.kind).toBe('claimed');
    await new Promise((resolve) => setTimeout(resolve, 20));
    const current = await store.claim({ ...id, lease: 60_000 });
    if (old.kind !== 'claimed' || current.kind !== 'claimed') throw new Error('expected two claims');
    expect(current.owner.fence).toBe(old.owner.fence + 1);
    const response = { status: 200, headers: {}, body: Buffer.from('stale') };
    expect(await store.renew(old.owner, 60_000)).toBe(false);
    expect(await store.complete(old.owner, response)).toBe(false);
    expect(await store.release(old.owner)).toBe(false);
    expect(await store.complete(current.owner, { ...response, body: Buffer.from('fresh') })).toBe(true);
    expect((await row(id.key)).response_body.toString()).toBe('fresh');
  });

  it('never lets the owner of a vanished record complete the next record of its key', async () => {
    const store = first.app.get(IdempotencyStore);
    const id = { scope: scopeOf(token), key: randomUUID(), fingerprint: 'f'.repeat(64), lease: 60_000, ttl: 60_000 };
    const old = await store.claim(id);
    // The row goes away under its owner (a purge after its TTL, a database that lost it).
    await first.dataSource.query(`DELETE FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2`, [id.scope, id.key]);
    const next = await store.claim(id);
    if (old.kind !== 'claimed' || next.kind !== 'claimed') throw new Error('expected two claims');
    expect(next.owner.fence).not.toBe(old.owner.fence);
    const response = { status: 200, headers: {}, body: Buffer.from('stale') };
    expect(await store.complete(old.owner, response)).toBe(false);
    expect(await store.complete(next.owner, { ...response, body: Buffer.from('fresh') })).toBe(true);
  });

  it('claims a key whose expired record a purge deletes while the claim waits on it', async () => {
    const store = first.app.get(IdempotencyStore);
    const id = { scope: scopeOf(token), key: randomUUID(), fingerprint: 'f'.repeat(64), lease: 60_000, ttl: 60_000 };
    const old = await store.claim(id);
    if (old.kind !== 'claimed') throw new Error('expected a claim');
    await store.complete(old.owner, { status: 200, headers: {}, body: Buffer.from('old') });
    await first.dataSource.query(`UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE api_key_id = $1 AND idem_key = $2`, [id.scope, id.key]);
    // A purge has deleted the record but not committed yet: the claim's INSERT (alone or in CLAIM)
    // waits for it, while CLAIM as a whole still sees the old record.
    const purge = first.dataSource.createQueryRunner();
    await purge.connect();
    try {
      await purge.startTransaction();
      await purge.query(`DELETE FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2`, [id.scope, id.key]);
      const claim = store.claim(id);
      await waitFor(async () => {
        const [waiting] = await first.dataSource.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO idempotency_keys%'`,
        );
        return waiting.n === 1;
      });
      await purge.commitTransaction();
      const outcome = await claim;
      if (outcome.kind !== 'claimed') throw new Error(`expected a claim, got ${outcome.kind}`);
      expect(await store.complete(outcome.owner, { status: 200, headers: {}, body: Buffer.from('new') })).toBe(true);
      expect((await row(id.key)).response_body.toString()).toBe('new');
    } finally {
      await purge.release();
    }
  });

  it('never mixes two bodies when a large stored body changes between the pieces of its read', async () => {
    const store = first.app.get(IdempotencyStore) as PostgresIdempotencyStore;
    const id = { scope: scopeOf(token), key: randomUUID(), fingerprint: 'f'.repeat(64), lease: 60_000, ttl: 60_000 };
    // Three pieces of 256 KiB; the two bodies differ in every byte.
    const oldBody = Buffer.alloc(600 * 1024, 'a');
    const newBody = Buffer.alloc(600 * 1024, 'b');
    const claimed = await store.claim(id);
    if (claimed.kind !== 'claimed') throw new Error('expected a claim');
    await store.complete(claimed.owner, { status: 200, headers: {}, body: oldBody });
    // After the first piece is read, the record is taken over and completed with another body.
    const { run } = store;
    let pieces = 0;
    const interleaved: SqlRunner = async (statement, values) => {
      const result = await run(statement, values);
      if (statement.name.startsWith('idempotency_read_body_piece') && ++pieces === 1) {
        await first.dataSource.query(
          `UPDATE idempotency_keys SET fence = fence + 1, response_body = $3 WHERE api_key_id = $1 AND idem_key = $2`,
          [id.scope, id.key, newBody],
        );
      }
      return result;
    };
    const replay = await store.claim(id, interleaved);
    if (replay.kind !== 'completed') throw new Error(`expected a completed record, got ${replay.kind}`);
    expect(replay.response.body?.equals(newBody)).toBe(true);
    expect(pieces).toBeGreaterThan(3);
  });

  describe('a claim opens with the statement the recent keys make cheapest', () => {
    const claimRequest = (key: string, fingerprint = 'f'.repeat(64)) => ({ scope: scopeOf(token), key, fingerprint, lease: 60_000, ttl: 60_000 });
    // A store of its own, so the history of the shared app's store does not decide which way it claims.
    const freshStore = () => {
      const store = new PostgresIdempotencyStore(first.dataSource);
      const { run } = first.app.get(IdempotencyStore) as PostgresIdempotencyStore;
      let statements: string[] = [];
      const recording: SqlRunner = (statement, values) => {
        statements.push(statement.name.replace(/^idempotency_|_v\d+$/g, ''));
        return run(statement, values);
      };
      return {
        async claim(request: ClaimRequest) {
          statements = [];
          const outcome = await store.claim(request, recording);
          return { outcome, statements };
        },
      };
    };
    const recordCompleted = async (request: ClaimRequest, body: Buffer) => {
      const store = first.app.get(IdempotencyStore);
      const claimed = await store.claim(request);
      if (claimed.kind !== 'claimed') throw new Error('expected a claim');
      await store.complete(claimed.owner, { status: 201, headers: { 'content-type': 'text/plain' }, body });
      return claimed.owner;
    };
    // 30 requests with one new key, alternating between the two instances: one handler run, one answer.
    const burstOverBothInstances = async () => {
      const key = randomUUID();
      const before = handlerRuns('create');
      const answers = await Promise.all(Array.from({ length: 30 }, (_, i) => post(i % 2 === 0 ? first : second, '/things', key, { burst: 2 })));
      expect(handlerRuns('create')).toBe(before + 1);
      expect(answers.every((answer) => answer.status === 201 || answer.json.error.code === 'idempotency_key_in_use')).toBe(true);
      expect(new Set(answers.filter((answer) => answer.status === 201).map((answer) => answer.body.toString('hex'))).size).toBe(1);
    };

    // Every kind of record comes out of `subject` as the claim gives it: a completed record with a
    // short body through the statements `answer`, one with a long body and a key in flight through
    // `settle`, an expired record (found, then taken only by a claim) through `takeOver`.
    const expectRecordsAnsweredAsClaimed = async (
      subject: ReturnType<typeof freshStore>,
      statements: { answer: string[]; settle: string[]; takeOver: string[] },
    ) => {
      const { answer, settle, takeOver } = statements;
      const completed = claimRequest(randomUUID());
      await recordCompleted(completed, Buffer.from('stored answer'));
      const replay = await subject.claim(completed);
      expect(replay.statements).toEqual(answer);
      if (replay.outcome.kind !== 'completed') throw new Error(`expected a completed record, got ${replay.outcome.kind}`);
      expect(replay.outcome.response.body?.toString()).toBe('stored answer');
      expect(replay.outcome.fingerprint).toBe(completed.fingerprint);

      const other = await subject.claim({ ...completed, fingerprint: 'e'.repeat(64) });
      expect(other.outcome).toMatchObject({ kind: 'completed', fingerprint: completed.fingerprint });

      const large = claimRequest(randomUUID());
      const largeBody = Buffer.alloc(300 * 1024, 'z');
      await recordCompleted(large, largeBody);
      const largeReplay = await subject.claim(large);
      expect(largeReplay.statements).toEqual([...settle, 'read_body_piece', 'read_body_piece']);
      expect(largeReplay.outcome.kind === 'completed' && largeReplay.outcome.response.body?.equals(largeBody)).toBe(true);

      const inFlight = claimRequest(randomUUID());
      await first.app.get(IdempotencyStore).claim(inFlight);
      expect(await subject.claim(inFlight)).toEqual({ outcome: { kind: 'in_flight', fingerprint: inFlight.fingerprint }, statements: settle });

      const expired = claimRequest(randomUUID());
      const expiredOwner = await recordCompleted(expired, Buffer.from('old'));
      await first.dataSource.query(`UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE api_key_id = $1 AND idem_key = $2`, [expired.scope, expired.key]);
      const takenOver = await subject.claim(expired);
      expect(takenOver.statements).toEqual(takeOver);
      expect(takenOver.outcome).toMatchObject({ kind: 'claimed', owner: { fence: expiredOwner.fence + 1 } });
    };

    describe('when most keys come back recorded (a retry storm), a claim reads the record first', () => {
      const turnToReadingFirst = async (subject: ReturnType<typeof freshStore>) => {
        const request = claimRequest(randomUUID());
        await recordCompleted(request, Buffer.from('recorded'));
        for (let i = 0; i < 60; i++) await subject.claim(request);
        expect((await subject.claim(request)).statements).toEqual(['look']);
      };

      it('answers every kind of record as the claim does, and takes a key only through the claim', async () => {
        const subject = freshStore();
        await turnToReadingFirst(subject);

        await expectRecordsAnsweredAsClaimed(subject, { answer: ['look'], settle: ['look', 'claim'], takeOver: ['look', 'claim', 'take_over'] });

        // An abandoned claim is not answered by the read either: it is taken only by the claim.
        const abandoned = claimRequest(randomUUID());
        await first.app.get(IdempotencyStore).claim(abandoned);
        await first.dataSource.query(`UPDATE idempotency_keys SET lease_expires_at = now() - interval '1 second' WHERE api_key_id = $1 AND idem_key = $2`, [abandoned.scope, abandoned.key]);
        const abandonedTaken = await subject.claim(abandoned);
        expect(abandonedTaken.statements).toEqual(['look', 'claim', 'take_over']);
        expect(abandonedTaken.outcome.kind).toBe('claimed');

        const absent = await subject.claim(claimRequest(randomUUID()));
        expect(absent.statements).toEqual(['look', 'claim']);
        expect(absent.outcome.kind).toBe('claimed');
      });

      it('claims straight away again once fresh keys are the usual again, and inserts first once nearly all are', async () => {
        const subject = freshStore();
        await turnToReadingFirst(subject);
        const openings: string[] = [];
        for (let i = 0; i < 60; i++) {
          const { outcome, statements } = await subject.claim(claimRequest(randomUUID()));
          expect(outcome.kind).toBe('claimed');
          if (openings.at(-1) !== statements[0]) openings.push(statements[0]);
        }
        expect(openings).toEqual(['look', 'claim', 'insert']);
      });

      it('runs the handler exactly once for concurrent requests with one key while both instances read first', async () => {
        const recorded = randomUUID();
        expect((await post(first, '/things', recorded, { warm: true })).status).toBe(201);
        // Replays on both instances turn their stores to reading first.
        for (let i = 0; i < 60; i++) {
          for (const app of [first, second]) expect((await post(app, '/things', recorded, { warm: true })).headers['idempotency-replayed']).toBe('true');
        }
        for (const app of [first, second]) expect(claimOpening(app)).toBe('look');
        await burstOverBothInstances();
      });
    });

    describe('when nearly every key is new, a claim inserts first', () => {
      it('answers every kind of record as the claim does, after an INSERT that wins nothing', async () => {
        const subject = freshStore();
        const fresh = await subject.claim(claimRequest(randomUUID()));
        expect(fresh.statements).toEqual(['insert']);
        expect(fresh.outcome.kind).toBe('claimed');

        await expectRecordsAnsweredAsClaimed(subject, { answer: ['insert', 'claim'], settle: ['insert', 'claim'], takeOver: ['insert', 'claim', 'take_over'] });
        expect((await subject.claim(claimRequest(randomUUID()))).statements).toEqual(['insert']);
      });

      it('runs the handler exactly once for concurrent requests with one key while both instances insert first', async () => {
        for (const app of [first, second]) {
          for (let i = 0; i < 80 && claimOpening(app) !== 'insert'; i++) expect((await post(app, '/things', randomUUID(), { warm: true })).status).toBe(201);
          expect(claimOpening(app)).toBe('insert');
        }
        await burstOverBothInstances();
      });
    });
  });

  it('completes the record of a client that hung up mid-request, and replays it to the retry', async () => {
    const key = randomUUID();
    const gate = `abort-${key}`;
    const aborted = new Promise<void>((resolve) => {
      const url = new URL(`/things/slow/${gate}`, first.url);
      const outgoing = httpRequest({ method: 'POST', hostname: url.hostname, port: url.port, path: url.pathname, headers: Object.fromEntries(authed(token, key)) });
      outgoing.on('error', () => resolve());
      outgoing.end();
      void waitFor(() => first.probe.count(`slow:${gate}`) === 1).then(() => {
        outgoing.destroy();
        resolve();
      });
    });
    await aborted;
    first.probe.gate(gate).open();
    await waitFor(async () => (await row(key))?.response_status === 201);
    const retry = await post(first, `/things/slow/${gate}`, key);
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotency-replayed']).toBe('true');
    expect(retry.json).toMatchObject({ n: 1, gate });
  });

  it('completes the record of a client that reset the connection mid-request (TCP RST), and replays it to the retry', async () => {
    const key = randomUUID();
    const gate = `reset-${key}`;
    // The server side of our connection, to know when the server has seen it go.
    const server = first.app.getHttpServer() as Server;
    const accepted: net.Socket[] = [];
    const onConnection = (socket: net.Socket) => accepted.push(socket);
    server.on('connection', onConnection);
    const client = net.connect(Number(new URL(first.url).port), '127.0.0.1');
    let claimedFence: number | undefined;
    try {
      await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
      client.on('error', () => undefined);
      const head = [`POST /things/slow/${gate} HTTP/1.1`, `Host: 127.0.0.1`, ...authed(token, key).map(([name, value]) => `${name}: ${value}`), 'Content-Length: 0'];
      client.write(`${head.join('\r\n')}\r\n\r\n`);
      await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
      claimedFence = (await row(key)).fence;
      const serverSide = accepted.find((socket) => socket.remotePort === client.localPort);
      if (!serverSide) throw new Error('the server side of the connection was not seen');
      const closed = serverSide.destroyed ? Promise.resolve() : new Promise((resolve) => serverSide.once('close', resolve));
      client.resetAndDestroy();
      await closed;
    } finally {
      server.off('connection', onConnection);
    }
    // The server knows the client is gone; the handler still runs, and its key stays claimed. (Were
    // the key freed, the duplicate would run the handler on the other instance, whose gate is open.)
    second.probe.gate(gate).open();
    const busy = await post(second, `/things/slow/${gate}`, key);
    expect(busy.status).toBe(409);
    expect(busy.json.error.code).toBe('idempotency_key_in_use');
    first.probe.gate(gate).open();
    await waitFor(async () => (await row(key))?.response_status === 201);
    const record = await row(key);
    expect(record.fence).toBe(claimedFence);
    expect(record.expires_at.getTime()).toBeGreaterThan(Date.now() + 3_600_000);
    const retry = await post(second, `/things/slow/${gate}`, key);
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotency-replayed']).toBe('true');
    expect(retry.json).toMatchObject({ n: 1, gate });
    expect(first.probe.count(`slow:${gate}`) + second.probe.count(`slow:${gate}`)).toBe(1);
  });

  it('stores the record before the response leaves: the record is complete when the client reads the answer', async () => {
    for (let i = 0; i < 20; i++) {
      const key = randomUUID();
      const answer = await post(first, '/things', key, { i });
      const record = await row(key);
      expect(record.response_status).toBe(answer.status);
      expect(Buffer.compare(record.response_body, answer.body)).toBe(0);
    }
  });

  it('still answers when storing the response fails, and keeps the key in flight so no retry runs the handler', async () => {
    const key = randomUUID();
    const gate = `store-fails-${key}`;
    const pending = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const claimedFence = (await row(key)).fence;
    // From now on no record may be completed: the UPDATE that stores a response fails.
    await first.dataSource.query(`ALTER TABLE idempotency_keys ADD CONSTRAINT no_completion CHECK (response_status IS NULL) NOT VALID`);
    let answer: WireResponse;
    try {
      first.probe.gate(gate).open();
      answer = await pending;
    } finally {
      await first.dataSource.query(`ALTER TABLE idempotency_keys DROP CONSTRAINT no_completion`);
    }
    expect(answer.status).toBe(201);
    const record = await row(key);
    expect(record.response_status).toBeNull();
    expect(record.fence).toBe(claimedFence);
    const retry = await post(second, `/things/slow/${gate}`, key);
    expect(retry.status).toBe(409);
    expect(retry.json.error.code).toBe('idempotency_key_in_use');
    expect(first.probe.count(`slow:${gate}`) + second.probe.count(`slow:${gate}`)).toBe(1);
  });
});

describe.each(PLATFORMS)('Responses over the size cap (%s)', (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;

  beforeAll(async () => {
    database = await createTestDatabase();
    app = await startFixtureApp(database.url, { maxResponseBytes: 1000 }, platform);
  });
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });

  it('sends a response larger than the cap in full, does not store it, and answers its retry with a clear error', async () => {
    const token = `tok_${randomUUID()}`;
    const key = randomUUID();
    const first = await send(app.url, { path: '/things/large', headers: authed(token, key) });
    expect(first.status).toBe(201);
    expect(first.json.padding).toHaveLength(5000);
    const retry = await send(app.url, { path: '/things/large', headers: authed(token, key) });
    expect(retry.status).toBe(409);
    expect(retry.json.error.code).toBe('idempotency_response_not_stored');
    expect(app.probe.count('large')).toBe(1);
    const [record] = await app.dataSource.query('SELECT response_status, response_body FROM idempotency_keys WHERE idem_key = $1', [key]);
    expect(record).toEqual({ response_status: 201, response_body: null });
  });
});
