import { randomUUID } from 'node:crypto';
import { Controller, Post } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import { IdempotencyConfigurationError, Idempotent, IdempotencyTransaction } from '../src';
import { PLATFORMS, bootFixture, claimOpening, type FixtureApp } from './support/fixture-app';
import { authed, send } from './support/http-client';
import { LEDGER_SCHEMA, LedgerController } from './support/ledger-controller';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

// SPEC §4: the claim, the handler's writes and the stored response commit in one transaction.
describe.each(PLATFORMS)('Transactional mode (%s)', (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;
  let token: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    // A pool of 5 connections, to show that duplicates never hold one while they wait.
    app = await bootFixture(database.url, { controllers: [LedgerController], platform, poolSize: 5, options: { isolation: 'REPEATABLE READ' } });
    await app.dataSource.query(LEDGER_SCHEMA);
  });
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });
  beforeEach(() => {
    token = `tok_${randomUUID()}`;
  });
  // A test that failed while a handler waited on a gate must not leave it hanging into app.close().
  afterEach(() => app?.probe.openAll());

  const post = (path: string, key: string | undefined, body: unknown = { note: randomUUID() }) => send(app.url, { path, headers: authed(token, key), body });
  const ledgerRows = async (note: string) => Number((await app.dataSource.query('SELECT count(*) AS n FROM ledger WHERE note = $1', [note]))[0].n);
  const record = async (key: string) => (await app.dataSource.query('SELECT * FROM idempotency_keys WHERE idem_key = $1', [key]))[0];

  it('commits the business row and the stored response together, and replays without writing again', async () => {
    const key = randomUUID();
    const note = randomUUID();
    const first = await post('/ledger', key, { note });
    expect(first.status).toBe(201);
    expect(first.json.inTransaction).toBe(true);
    const replay = await post('/ledger', key, { note });
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(first.body)).toBe(true);
    expect(await ledgerRows(note)).toBe(1);
    expect((await record(key)).response_status).toBe(201);
  });

  it('rolls back the write of a handler that throws a 4xx but stores that 4xx for replay', async () => {
    const key = randomUUID();
    const note = randomUUID();
    const first = await post('/ledger/then-reject', key, { note });
    expect(first.status).toBe(422);
    expect(await ledgerRows(note)).toBe(0);
    const replay = await post('/ledger/then-reject', key, { note });
    expect(replay.status).toBe(422);
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(first.body)).toBe(true);
    expect(app.probe.count('then-reject')).toBe(1);
  });

  it('leaves nothing behind when the handler throws after writing: the retry writes exactly one row', async () => {
    const key = randomUUID();
    const note = randomUUID();
    const first = await post('/ledger/then-crash', key, { note });
    expect(first.status).toBe(500);
    expect(await ledgerRows(note)).toBe(0);
    expect(await record(key)).toBeUndefined();
    const retry = await post('/ledger/then-crash', key, { note });
    expect(retry.status).toBe(201);
    expect(await ledgerRows(note)).toBe(1);
  });

  it('answers 500 internal_error when COMMIT fails, stores nothing, and runs the retry again', async () => {
    const key = randomUUID();
    const note = randomUUID();
    const first = await post('/ledger/bad-commit', key, { note });
    expect(first.status).toBe(500);
    expect(first.json.error).toMatchObject({ type: 'idempotency_error', code: 'internal_error', param: null });
    // The replaced answer keeps what middleware set (the request id) and drops what described the lost one.
    expect(first.headers['x-request-id']).toMatch(/^req_/);
    expect(first.headers['x-request-id']).toBe(first.json.error.request_id);
    expect(first.headers['idempotency-expires-at']).toBeUndefined();
    expect(await ledgerRows(note)).toBe(0);
    expect(await record(key)).toBeUndefined();
    const retry = await post('/ledger/bad-commit', key, { note });
    expect(retry.status).toBe(201);
    expect(retry.json).toEqual({ attempt: 2 });
    expect(await ledgerRows(note)).toBe(1);
  });

  it('runs transactional routes at the module-level isolation option', async () => {
    expect((await post('/ledger/isolation', randomUUID())).json.isolation).toBe('repeatable read');
  });

  it('answers 500 internal_error when the handler left the transaction aborted, keeping none of its writes', async () => {
    const note = randomUUID();
    const answer = await post('/ledger/swallow', randomUUID(), { note });
    expect(answer.status).toBe(500);
    expect(answer.json.error.code).toBe('internal_error');
    expect(await ledgerRows(note)).toBe(0);
  });

  it('runs a request without a key inside a transaction too, storing nothing', async () => {
    const note = randomUUID();
    const answer = await post('/ledger', undefined, { note });
    expect(answer.status).toBe(201);
    expect(answer.json.inTransaction).toBe(true);
    expect(await ledgerRows(note)).toBe(1);
    const rejected = await post('/ledger/then-reject', undefined, { note: `${note}-rejected` });
    expect(rejected.status).toBe(422);
    expect(await ledgerRows(`${note}-rejected`)).toBe(0);
  });

  it('answers 50 concurrent duplicates with a pool of 5 without deadlock: one execution, one row', async () => {
    const key = randomUUID();
    const note = randomUUID();
    const gate = `burst-${key}`;
    const first = post(`/ledger/slow/${gate}`, key, { note });
    await waitFor(() => app.probe.count(`ledger-slow:${gate}`) === 1);
    const duplicates = await Promise.all(Array.from({ length: 50 }, () => post(`/ledger/slow/${gate}`, key, { note })));
    for (const duplicate of duplicates) {
      expect(duplicate.status).toBe(409);
      expect(duplicate.json.error.code).toBe('idempotency_key_in_use');
      expect(duplicate.headers['retry-after']).toBe('1');
    }
    app.probe.gate(gate).open();
    const done = await first;
    expect(done.status).toBe(201);
    const replay = await post(`/ledger/slow/${gate}`, key, { note });
    expect(replay.body.equals(done.body)).toBe(true);
    expect(app.probe.count(`ledger-slow:${gate}`)).toBe(1);
    expect(await ledgerRows(note)).toBe(1);
  });

  // 20 requests at once with one new key: one ledger row, one answer. Returns the key and its note.
  const burstCommitsOneRow = async () => {
    const key = randomUUID();
    const note = randomUUID();
    const answers = await Promise.all(Array.from({ length: 20 }, () => post('/ledger', key, { note })));
    expect(answers.every((answer) => answer.status === 201 || answer.json.error.code === 'idempotency_key_in_use')).toBe(true);
    expect(new Set(answers.filter((answer) => answer.status === 201).map((answer) => answer.body.toString('hex'))).size).toBe(1);
    expect(await ledgerRows(note)).toBe(1);
    return { key, note };
  };

  it('inserts first while keys are new here too: a burst on a fresh key commits one row, and its retry replays', async () => {
    const untilInsertingFirst = async () => {
      for (let i = 0; i < 80 && claimOpening(app) !== 'insert'; i++) {
        expect((await post('/ledger', randomUUID(), { note: randomUUID() })).status).toBe(201);
      }
      expect(claimOpening(app)).toBe('insert');
    };
    await untilInsertingFirst();
    const { key, note } = await burstCommitsOneRow();
    // The burst's duplicates that came after its commit found the key recorded, which may have moved
    // the rate (more of them do behind a pooler): the retry goes out inserting first again.
    await untilInsertingFirst();
    expect((await post('/ledger', key, { note })).headers['idempotency-replayed']).toBe('true');
    expect(await ledgerRows(note)).toBe(1);
  });

  it('reads first in a retry storm here too: replays write nothing, and a burst on a fresh key commits one row', async () => {
    const recorded = randomUUID();
    const warm = { note: randomUUID() };
    expect((await post('/ledger', recorded, warm)).status).toBe(201);
    for (let i = 0; i < 60; i++) expect((await post('/ledger', recorded, warm)).headers['idempotency-replayed']).toBe('true');
    expect(claimOpening(app)).toBe('look');
    expect(await ledgerRows(warm.note)).toBe(1);

    const { key, note } = await burstCommitsOneRow();
    expect((await post('/ledger', key, { note })).headers['idempotency-replayed']).toBe('true');
  });

  it('turns a serialization failure into 409 transaction_conflict that the client retries with the same key', async () => {
    const keys = [randomUUID(), randomUUID()];
    const before = app.probe.count('increment');
    const racing = keys.map((key) => post('/ledger/increment', key));
    await waitFor(() => app.probe.count('increment') === before + 2);
    app.probe.gate('increment').open();
    const answers = await Promise.all(racing);
    const statuses = answers.map((answer) => answer.status).sort();
    expect(statuses).toEqual([201, 409]);
    const loser = answers.findIndex((answer) => answer.status === 409);
    expect(answers[loser].json.error.code).toBe('transaction_conflict');
    expect(answers[loser].headers['retry-after']).toBe('1');
    expect(await record(keys[loser])).toBeUndefined();
    const retry = await post('/ledger/increment', keys[loser]);
    expect(retry.status).toBe(201);
    const [{ value }] = await app.dataSource.query('SELECT value FROM counter WHERE id = 1');
    expect(retry.json.value).toBe(value);
  });

  it('turns a deadlock between two requests into 409 transaction_conflict for the one PostgreSQL rolled back', async () => {
    const gate = `deadlock-${randomUUID()}`;
    const keys = [randomUUID(), randomUUID()];
    // Each holds one row of the pair and then asks for the other: a real deadlock (SQLSTATE 40P01).
    const racing = [post(`/ledger/lock/${gate}/1/2`, keys[0]), post(`/ledger/lock/${gate}/2/1`, keys[1])];
    await waitFor(() => app.probe.count(`lock:${gate}`) === 2);
    app.probe.gate(gate).open();
    const answers = await Promise.all(racing);
    expect(answers.map((answer) => answer.status).sort()).toEqual([201, 409]);
    const loser = answers.findIndex((answer) => answer.status === 409);
    expect(answers[loser].json.error).toMatchObject({ type: 'idempotency_error', code: 'transaction_conflict', param: null });
    expect(answers[loser].headers['retry-after']).toBe('1');
    expect(await record(keys[loser])).toBeUndefined();
    expect((await record(keys[1 - loser])).response_status).toBe(201);
    const retry = await post(`/ledger/lock/${gate}/${loser === 0 ? '1/2' : '2/1'}`, keys[loser]);
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotency-replayed']).toBeUndefined();
  });

  it('turns a serialization failure raised at COMMIT into 409 transaction_conflict for the later committer', async () => {
    const id = randomUUID();
    const keys = { early: randomUUID(), late: randomUUID() };
    const gates = { early: `skew-early-${id}`, late: `skew-late-${id}` };
    // Crossed reads and writes of the pair: both handlers finish their statements without error.
    const early = post(`/ledger/skew/${gates.early}/1/2`, keys.early);
    const late = post(`/ledger/skew/${gates.late}/2/1`, keys.late);
    await waitFor(() => app.probe.count(`skew:${gates.early}`) === 1 && app.probe.count(`skew:${gates.late}`) === 1);
    app.probe.gate(gates.early).open();
    expect((await early).status).toBe(201);
    // The late one has nothing left to run in its handler: the failure comes when it stores and commits.
    app.probe.gate(gates.late).open();
    const conflicted = await late;
    expect(conflicted.status).toBe(409);
    expect(conflicted.json.error).toMatchObject({ type: 'idempotency_error', code: 'transaction_conflict', param: null });
    expect(conflicted.headers['retry-after']).toBe('1');
    expect(conflicted.headers['idempotency-expires-at']).toBeUndefined();
    expect(await record(keys.late)).toBeUndefined();
    expect((await record(keys.early)).response_status).toBe(201);
    const retry = await post(`/ledger/skew/${gates.late}/2/1`, keys.late);
    expect(retry.status).toBe(201);
    expect(app.probe.count(`skew:${gates.late}`)).toBe(2);
  });
});

describe.each(PLATFORMS)('Transactional responses over the size cap (%s)', (platform) => {
  let database: TestDatabase;
  let app: FixtureApp;

  beforeAll(async () => {
    database = await createTestDatabase();
    app = await bootFixture(database.url, { controllers: [LedgerController], platform, options: { maxResponseBytes: 1000 } });
    await app.dataSource.query(LEDGER_SCHEMA);
  });
  afterAll(async () => {
    await app?.close();
    await database?.drop();
  });

  it('sends a response larger than the cap in full and commits, but does not store it: the retry gets a clear error', async () => {
    const token = `tok_${randomUUID()}`;
    const key = randomUUID();
    const note = randomUUID();
    const first = await send(app.url, { path: '/ledger/large', headers: authed(token, key), body: { note } });
    expect(first.status).toBe(201);
    expect(first.json.padding).toHaveLength(5000);
    const retry = await send(app.url, { path: '/ledger/large', headers: authed(token, key), body: { note } });
    expect(retry.status).toBe(409);
    expect(retry.json.error.code).toBe('idempotency_response_not_stored');
    expect(app.probe.count('ledger-large')).toBe(1);
    const [stored] = await app.dataSource.query('SELECT response_status, response_body FROM idempotency_keys WHERE idem_key = $1', [key]);
    expect(stored).toEqual({ response_status: 201, response_body: null });
    expect(Number((await app.dataSource.query('SELECT count(*) AS n FROM ledger WHERE note = $1', [note]))[0].n)).toBe(1);
  });
});

describe('Transactional mode at bootstrap', () => {
  let database: TestDatabase;
  afterAll(() => database?.drop());

  it('refuses @IdempotencyTransaction() on a route that is not transactional, saying how to fix it', async () => {
    database = await createTestDatabase();
    @Controller('wrong')
    class WrongController {
      @Post() @Idempotent()
      create(@IdempotencyTransaction() manager: EntityManager) {
        return manager;
      }
    }
    const attempt = bootFixture(database.url, { controllers: [WrongController] });
    await expect(attempt).rejects.toThrow(IdempotencyConfigurationError);
    await expect(attempt).rejects.toThrow(/WrongController\.create\(\).*@Idempotent\(\{ transactional: true \}\)/);
  });
});
