import { randomUUID } from 'node:crypto';
import type { Pool, PoolClient } from 'pg';
import { DataSource } from 'typeorm';
import { CreateIdempotencyKeys1764288000000 } from '../src';
import type { ClaimOutcome, ClaimRequest, RecordOwner, StoredResponse } from '../src/store/idempotency.store';
import { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

// The store sends the INSERTs and COMPLETEs of fresh keys, or the LOOKs of recorded ones, asked for
// in one turn of the event loop as one statement each; every request must still get exactly its own answer.
describe('Statements shared by the requests of one turn', () => {
  let database: TestDatabase;
  let dataSource: DataSource;
  let store: PostgresIdempotencyStore;
  let statements: string[];

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = new DataSource({ type: 'postgres', url: database.url, migrations: [CreateIdempotencyKeys1764288000000], migrationsRun: true });
    await dataSource.initialize();
    // Names of the statements the store sends on the connections of this DataSource's pool, as they reach pg.
    const watched = new WeakSet<PoolClient>();
    (dataSource.driver as unknown as { master: Pool }).master.on('acquire', (client) => {
      if (watched.has(client)) return;
      watched.add(client);
      const query = client.query.bind(client) as (config: { name?: string }, ...rest: unknown[]) => Promise<unknown>;
      (client as unknown as { query: typeof query }).query = (config, ...rest) => {
        if (config?.name) statements.push(config.name.replace(/^idempotency_|_v\d+$/g, ''));
        return query(config, ...rest);
      };
    });
  });
  afterAll(async () => {
    await dataSource?.destroy();
    await database?.drop();
  });
  beforeEach(() => {
    // A store of its own per test: its running rate of recorded keys starts at "all new" (INSERT first).
    store = new PostgresIdempotencyStore(dataSource);
    statements = [];
  });

  const claimRequest = (key: string = randomUUID(), scope = 'scope-a'): ClaimRequest => ({ scope, key, fingerprint: 'f'.repeat(64), lease: 60_000, ttl: 60_000 });
  const owner = (outcome: ClaimOutcome): RecordOwner => {
    if (outcome.kind !== 'claimed') throw new Error(`expected a claim, got ${outcome.kind}`);
    return outcome.owner;
  };
  const record = async (scope: string, key: string) =>
    (await dataSource.query('SELECT fence, response_status, response_headers, response_body FROM idempotency_keys WHERE api_key_id = $1 AND idem_key = $2', [scope, key]))[0];

  it('claims the fresh keys of one turn with one INSERT, each with a fence of its own record', async () => {
    const requests = [claimRequest(), claimRequest(), claimRequest(undefined, 'scope-b')];
    const outcomes = await Promise.all(requests.map((request) => store.claim(request)));
    expect(statements).toEqual(['insert_many']);
    for (const [index, request] of requests.entries()) {
      expect(owner(outcomes[index])).toEqual({ scope: request.scope, key: request.key, fence: (await record(request.scope, request.key)).fence });
    }
  });

  it('sends at most 64 keys in one statement', async () => {
    const outcomes = await Promise.all(Array.from({ length: 130 }, () => store.claim(claimRequest())));
    expect(outcomes.every((outcome) => outcome.kind === 'claimed')).toBe(true);
    expect(statements).toEqual(['insert_many', 'insert_many', 'insert_many']);
  });

  it('claims a lone fresh key with the plain INSERT', async () => {
    expect((await store.claim(claimRequest())).kind).toBe('claimed');
    expect(statements).toEqual(['insert']);
  });

  it('gives one key asked for twice in one turn to one request; the other finds it in flight', async () => {
    const request = claimRequest();
    const other = claimRequest();
    const outcomes = await Promise.all([store.claim(request), store.claim(other), store.claim(request)]);
    expect(outcomes.map((outcome) => outcome.kind)).toEqual(['claimed', 'claimed', 'in_flight']);
    expect(statements).toEqual(['insert_many', 'claim']);
    // Keys that differ only in where scope ends and key begins are different records.
    const split = await Promise.all([store.claim(claimRequest('yz', 'scope-x')), store.claim(claimRequest('z', 'scope-xy'))]);
    expect(split.map((outcome) => outcome.kind)).toEqual(['claimed', 'claimed']);
  });

  it('answers a key already recorded in a batch as the claim does', async () => {
    const recorded = claimRequest();
    await store.complete(owner(await store.claim(recorded)), { status: 201, headers: {}, body: Buffer.from('first answer') });
    statements = [];
    const [replay, fresh] = await Promise.all([store.claim(recorded), store.claim(claimRequest())]);
    expect(statements).toEqual(['insert_many', 'claim']);
    expect(replay).toMatchObject({ kind: 'completed', response: { status: 201, body: Buffer.from('first answer') } });
    expect(fresh.kind).toBe('claimed');
  });

  it('stores the responses of one turn with one COMPLETE, each in its own record, and refuses a stale owner', async () => {
    const requests = [claimRequest(), claimRequest(), claimRequest()];
    const owners = (await Promise.all(requests.map((request) => store.claim(request)))).map(owner);
    const responses: StoredResponse[] = [
      { status: 201, headers: { 'content-type': 'application/json', vary: ['accept', 'origin'] }, body: Buffer.from('{"n":0}') },
      { status: 200, headers: { 'x-quoted': 'a "b" \\ c, {d}' }, body: null },
      { status: 202, headers: {}, body: Buffer.from([0, 1, 2, 255]) },
    ];
    statements = [];
    const stored = await Promise.all([
      ...owners.map((recordOwner, index) => store.complete(recordOwner, responses[index])),
      store.complete({ ...owners[0], fence: owners[0].fence + 1 }, responses[2]),
    ]);
    expect(statements).toEqual(['complete_many']);
    expect(stored).toEqual([true, true, true, false]);
    for (const [index, request] of requests.entries()) {
      const row = await record(request.scope, request.key);
      expect({ status: row.response_status, headers: row.response_headers, body: row.response_body }).toEqual(responses[index]);
    }
  });

  it('reads the records of one turn with one LOOK when most keys come back recorded', async () => {
    const recorded = [claimRequest(), claimRequest(), claimRequest(undefined, 'scope-b')];
    for (const [index, request] of recorded.entries()) {
      await store.complete(owner(await store.claim(request)), { status: 201, headers: {}, body: Buffer.from(`answer ${index}`) });
    }
    // Replayed one by one, until the store judges recorded keys the common case and reads first.
    for (let replays = 0; replays < 60; replays++) await store.claim(recorded[replays % recorded.length]);
    statements = [];
    const fresh = claimRequest();
    const outcomes = await Promise.all([...recorded, recorded[0], fresh].map((request) => store.claim(request)));
    // The fresh key is not in the LOOK's answer and goes on to CLAIM.
    expect(statements).toEqual(['look_many', 'claim']);
    for (const index of [0, 1, 2, 3]) {
      expect(outcomes[index]).toMatchObject({ kind: 'completed', response: { status: 201, body: Buffer.from(`answer ${index % 3}`) } });
    }
    expect(outcomes[4].kind).toBe('claimed');
  });

  it('plans each batch statement once per connection, whatever the size of its batches', async () => {
    // One connection, so that its prepared statements can be read from pg_prepared_statements.
    const single = new DataSource({ type: 'postgres', url: database.url, extra: { max: 1 } });
    await single.initialize();
    try {
      // A table of many records, where a plan for a few given keys looks far cheaper than one for any number.
      await single.query(`INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, expires_at, created_at, completed_at, response_status, response_body)
                          SELECT 'scope-plans', 'key-' || g, 'f', 1, now() + interval '1 hour', now(), now(), 201, '\\x00' FROM generate_series(1, 50000) g`);
      await single.query('ANALYZE idempotency_keys');
      const batchStore = new PostgresIdempotencyStore(single);
      // Small batches, as under moderate load.
      const batches = Array.from({ length: 10 }, (_, batch) => Array.from({ length: 2 + (batch % 2) }, () => claimRequest()));
      for (const requests of batches) {
        const owners = (await Promise.all(requests.map((request) => batchStore.claim(request)))).map(owner);
        await Promise.all(owners.map((recordOwner) => batchStore.complete(recordOwner, { status: 201, headers: {}, body: Buffer.from('x') })));
      }
      // Replayed until the store reads first, then the same batches again.
      for (let replays = 0; replays < 60; replays++) await batchStore.claim(batches[0][0]);
      for (const requests of batches) await Promise.all(requests.map((request) => batchStore.claim(request)));
      const plans = await single.query(`SELECT name, generic_plans, custom_plans FROM pg_prepared_statements WHERE name LIKE '%_many_%' ORDER BY name`);
      // PostgreSQL tries 5 custom plans before it settles on the generic one.
      expect(plans).toEqual(
        ['complete', 'insert', 'look'].map((statement) => ({ name: expect.stringMatching(`^idempotency_${statement}_many_`), generic_plans: '5', custom_plans: '5' })),
      );
    } finally {
      await single.destroy();
    }
  });

  it('sends a failed batch again item by item, so only the item that caused the error fails', async () => {
    // PostgreSQL refuses a NUL byte in text: this request's INSERT fails, and fails the batch it is in.
    const requests = [claimRequest(), claimRequest(undefined, 'scope\u0000nul'), claimRequest()];
    const outcomes = await Promise.allSettled(requests.map((request) => store.claim(request)));
    expect(outcomes.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(statements).toEqual(['insert_many', 'insert', 'insert', 'insert']);
    for (const index of [0, 2]) expect(await record(requests[index].scope, requests[index].key)).toBeDefined();
  });

  it('does not hold up a batch behind a key whose transactional claim is not committed yet', async () => {
    const held = claimRequest();
    const transaction = await store.begin('READ COMMITTED');
    let heldClaim: Promise<ClaimOutcome> | undefined;
    try {
      expect((await transaction.claim(held)).kind).toBe('claimed');
      statements = [];
      heldClaim = store.claim(held);
      // Were that key in the batch's INSERT, the INSERT would wait for the transaction: here, for ever.
      const waited = new Promise<string>((resolve) => setTimeout(() => resolve('still waiting after 5 s'), 5_000).unref());
      expect(await Promise.race([store.claim(claimRequest()).then((outcome) => outcome.kind), waited])).toBe('claimed');
      // The held key went on to CLAIM, which reaches its connection a moment later.
      await waitFor(() => statements.length === 2);
      expect(statements).toEqual(['insert_many', 'claim']);
    } finally {
      await transaction.rollback();
    }
    // Alone, the held key's claim waited for the transaction, and got the key once it rolled back.
    expect((await heldClaim).kind).toBe('claimed');
  });
});
