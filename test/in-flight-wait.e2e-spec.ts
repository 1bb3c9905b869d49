import { jest } from '@jest/globals';
import { Body, Controller, Param, Post, ServiceUnavailableException } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import type { EntityManager } from 'typeorm';
import { Idempotent, IdempotencyStore, IdempotencyTransaction, type IdempotencyModuleOptions } from '../src';
import { fingerprintRequest } from '../src/fingerprint';
import { PLATFORMS, Probe, ThingsController, bootFixture, type FixtureApp, type Platform } from './support/fixture-app';
import { hangUp } from './support/hang-up';
import { authed, scopeOf, send, type WireResponse } from './support/http-client';
import { LEDGER_SCHEMA } from './support/ledger-controller';
import { createTestDatabase, type TestDatabase } from './support/test-database';
import { waitFor } from './support/wait-for';

type Note = { note: string };

/** Runs per gate over both instances of a test (each has a Probe of its own). */
const runsAt = new Map<string, number>();
const nextRun = (gate: string) => {
  runsAt.set(gate, (runsAt.get(gate) ?? 0) + 1);
  return runsAt.get(gate)!;
};

/** Handlers held at a gate that answer, fail once, or write a ledger row in their transaction. */
@Controller('held')
class HeldController {
  constructor(private readonly probe: Probe) {}

  @Post('fail-once/:gate') @Idempotent()
  async failOnce(@Param('gate') gate: string) {
    this.probe.hit(`fail-once:${gate}`);
    const run = nextRun(gate);
    await this.probe.gate(gate).promise;
    if (run === 1) throw new ServiceUnavailableException('first run fails');
    return { run };
  }

  @Post('ledger/:gate') @Idempotent({ transactional: true })
  async ledger(@Param('gate') gate: string, @Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    this.probe.hit(`ledger:${gate}`);
    const run = nextRun(gate);
    await manager.query('INSERT INTO ledger (note) VALUES ($1)', [body.note]);
    await this.probe.gate(gate).promise;
    if (run === 1 && gate.startsWith('crash')) throw new Error('first run crashes');
    return { run, note: body.note };
  }

  @Post('ledger-free') @Idempotent({ transactional: true })
  async ledgerFree(@Body() body: Note, @IdempotencyTransaction() manager: EntityManager) {
    await manager.query('INSERT INTO ledger (note) VALUES ($1)', [body.note]);
    return { note: body.note };
  }
}

const WAIT: IdempotencyModuleOptions = { inFlight: 'wait', inFlightWait: 2000, inFlightWaiters: 4 };

// inFlight: 'wait' holds a duplicate of a request in flight and answers it with the first one's answer.
describe.each(PLATFORMS)("inFlight: 'wait' (%s)", (platform: Platform) => {
  let database: TestDatabase;
  let first: FixtureApp;
  let second: FixtureApp;
  let token: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    // Two instances on one database, each with a pool of 3: waiting duplicates must hold none of it.
    const controllers = [ThingsController, HeldController];
    const boot = () => bootFixture(database.url, { controllers, platform, poolSize: 3, options: WAIT });
    first = await boot();
    second = await boot();
    await first.dataSource.query(LEDGER_SCHEMA);
  });
  afterAll(async () => {
    await first?.close();
    await second?.close();
    await database?.drop();
  });
  beforeEach(() => {
    token = `tok_${randomUUID()}`;
  });
  afterEach(() => {
    first?.probe.openAll();
    second?.probe.openAll();
  });

  const post = (app: FixtureApp, path: string, key?: string, body: unknown = { a: 1 }) =>
    send(app.url, { path, headers: authed(token, key), body });
  const runs = (name: string) => first.probe.count(name) + second.probe.count(name);
  const ledgerRows = async (note: string) =>
    Number((await first.dataSource.query('SELECT count(*) AS n FROM ledger WHERE note = $1', [note]))[0].n);
  /** A pending answer, and whether it has come yet. */
  const track = (answer: Promise<WireResponse>) => {
    const tracked = { answer, settled: false };
    void answer.finally(() => (tracked.settled = true));
    return tracked;
  };
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  it('holds a duplicate on the other instance and answers it with the replay of the first answer', async () => {
    const key = randomUUID();
    const gate = `across-${key}`;
    const original = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const duplicate = track(post(second, `/things/slow/${gate}`, key));
    await sleep(500);
    expect(duplicate.settled).toBe(false);
    first.probe.gate(gate).open();
    second.probe.gate(gate).open();
    const answered = await original;
    const stored = Date.now();
    const replay = await duplicate.answer;
    // Within a poll or two of the answer being stored (the polls back off to at most 250 ms).
    expect(Date.now() - stored).toBeLessThan(1000);
    expect(replay.status).toBe(201);
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.equals(answered.body)).toBe(true);
    expect(runs(`slow:${gate}`)).toBe(1);
  });

  it('finds by its own claims an answer stored by another process, which tells this one nothing', async () => {
    const key = randomUUID();
    const body = { stored: 'elsewhere' };
    // What another process leaves while its handler runs: an in-flight record with a live lease.
    const fingerprint = fingerprintRequest({ method: 'POST', url: '/things', hasBody: true, body });
    const record = [scopeOf(token), key];
    await first.dataSource.query(
      `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at)
       VALUES ($1, $2, $3, 1, now() + interval '1 minute', now() + interval '1 hour', now())`,
      [...record, fingerprint],
    );
    const duplicate = track(post(second, '/things', key, body));
    await sleep(400);
    expect(duplicate.settled).toBe(false);
    await first.dataSource.query(
      `UPDATE idempotency_keys SET response_status = 201, response_headers = '{"content-type":"text/plain"}',
         response_body = 'from elsewhere', completed_at = now() WHERE api_key_id = $1 AND idem_key = $2`,
      record,
    );
    const replay = await duplicate.answer;
    expect(replay.headers['idempotency-replayed']).toBe('true');
    expect(replay.body.toString()).toBe('from elsewhere');
    expect(runs('create')).toBe(0);
  });

  it('wakes a duplicate on the same instance as soon as that instance stores the answer', async () => {
    const key = randomUUID();
    const gate = `same-${key}`;
    const original = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const duplicate = post(first, `/things/slow/${gate}`, key);
    // Long enough for the polls to have backed off to their longest interval.
    await sleep(1200);
    first.probe.gate(gate).open();
    await original;
    const stored = Date.now();
    expect((await duplicate).headers['idempotency-replayed']).toBe('true');
    expect(Date.now() - stored).toBeLessThan(100);
  });

  it('lets a duplicate run the handler itself when the first request failed and released the key', async () => {
    const key = randomUUID();
    const gate = `released-${key}`;
    const original = post(first, `/held/fail-once/${gate}`, key);
    await waitFor(() => first.probe.count(`fail-once:${gate}`) === 1);
    const duplicate = post(second, `/held/fail-once/${gate}`, key);
    await sleep(200);
    second.probe.gate(gate).open();
    first.probe.gate(gate).open();
    expect((await original).status).toBe(503);
    const ran = await duplicate;
    expect(ran.status).toBe(201);
    expect(ran.headers['idempotency-replayed']).toBeUndefined();
    expect(ran.json).toEqual({ run: 2 });
    expect(runs(`fail-once:${gate}`)).toBe(2);
  });

  it('answers 409 idempotency_key_in_use with Retry-After once inFlightWait has run out', async () => {
    const key = randomUUID();
    const gate = `timeout-${key}`;
    const original = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const started = Date.now();
    const busy = await post(second, `/things/slow/${gate}`, key);
    const waited = Date.now() - started;
    first.probe.gate(gate).open();
    await original;
    expect(busy.status).toBe(409);
    expect(busy.json.error.code).toBe('idempotency_key_in_use');
    expect(busy.headers['retry-after']).toBe('1');
    expect(waited).toBeGreaterThanOrEqual(2000);
    expect(waited).toBeLessThan(3000);
  });

  it('answers a conflicting request at once, without waiting', async () => {
    const key = randomUUID();
    const gate = `conflict-${key}`;
    const original = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const started = Date.now();
    const conflict = await post(second, `/things/slow/${gate}?other=1`, key);
    expect(Date.now() - started).toBeLessThan(500);
    expect(conflict.json.error.code).toBe('idempotency_key_conflict');
    first.probe.gate(gate).open();
    await original;
  });

  it('holds at most inFlightWaiters duplicates per instance: the next one gets 409 at once', async () => {
    const key = randomUUID();
    const gate = `bounded-${key}`;
    const original = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const waiting = Array.from({ length: 4 }, () => track(post(second, `/things/slow/${gate}`, key)));
    await sleep(300);
    const started = Date.now();
    const refused = await post(second, `/things/slow/${gate}`, key);
    expect(Date.now() - started).toBeLessThan(500);
    expect(refused.json.error.code).toBe('idempotency_key_in_use');
    expect(waiting.some((duplicate) => duplicate.settled)).toBe(false);
    first.probe.gate(gate).open();
    const done = await original;
    for (const duplicate of waiting) expect((await duplicate.answer).body.equals(done.body)).toBe(true);
  });

  it('stops the wait of a client that hangs up: no more claims, and its place is free again', async () => {
    const key = randomUUID();
    const gate = `hang-up-${key}`;
    const original = post(first, `/things/slow/${gate}`, key);
    await waitFor(() => first.probe.count(`slow:${gate}`) === 1);
    const store = second.app.get(IdempotencyStore);
    const claims = jest.spyOn(store, 'claim');
    const claimsOfKey = () => claims.mock.calls.filter(([request]) => request.key === key).length;
    try {
      await hangUp(second.app.getHttpServer() as Server, {
        path: `/things/slow/${gate}`,
        headers: authed(token, key),
        body: { a: 1 },
        // It has claimed, found the key in flight, and claimed again after a pause.
        leaveWhen: () => claimsOfKey() >= 2,
      });
      const claimed = claimsOfKey();
      await sleep(800);
      expect(claimsOfKey()).toBe(claimed);
    } finally {
      claims.mockRestore();
    }
    // All four places are free again: four more duplicates wait, none is refused at once.
    const waiting = Array.from({ length: 4 }, () => track(post(second, `/things/slow/${gate}`, key)));
    await sleep(300);
    expect(waiting.some((duplicate) => duplicate.settled)).toBe(false);
    first.probe.gate(gate).open();
    const done = await original;
    for (const duplicate of waiting) expect((await duplicate.answer).body.equals(done.body)).toBe(true);
  });

  describe('on a transactional route', () => {
    it('holds duplicates on both instances, holding no connection, then replays the committed answer', async () => {
      const key = randomUUID();
      const gate = `tx-${key}`;
      const note = randomUUID();
      const original = post(first, `/held/ledger/${gate}`, key, { note });
      await waitFor(() => first.probe.count(`ledger:${gate}`) === 1);
      const duplicates = Array.from({ length: 8 }, (_, i) =>
        track(post(i % 2 ? first : second, `/held/ledger/${gate}`, key, { note })),
      );
      await sleep(300);
      // The pools (3 connections each, one of the first's held by the original) still serve other requests.
      for (const app of [first, second]) {
        for (let i = 0; i < 3; i++) {
          expect((await post(app, '/held/ledger-free', randomUUID(), { note: randomUUID() })).status).toBe(201);
        }
      }
      expect(duplicates.some((duplicate) => duplicate.settled)).toBe(false);
      first.probe.gate(gate).open();
      second.probe.gate(gate).open();
      const done = await original;
      for (const duplicate of duplicates) {
        const replay = await duplicate.answer;
        expect(replay.headers['idempotency-replayed']).toBe('true');
        expect(replay.body.equals(done.body)).toBe(true);
      }
      expect(runs(`ledger:${gate}`)).toBe(1);
      expect(await ledgerRows(note)).toBe(1);
    });

    it('runs a duplicate in a fresh transaction when the first one rolled back', async () => {
      const key = randomUUID();
      const gate = `crash-${key}`;
      const note = randomUUID();
      const original = post(first, `/held/ledger/${gate}`, key, { note });
      await waitFor(() => first.probe.count(`ledger:${gate}`) === 1);
      const duplicate = post(second, `/held/ledger/${gate}`, key, { note });
      await sleep(200);
      second.probe.gate(gate).open();
      first.probe.gate(gate).open();
      expect((await original).status).toBe(500);
      const ran = await duplicate;
      expect(ran.status).toBe(201);
      expect(ran.json).toEqual({ run: 2, note });
      expect(await ledgerRows(note)).toBe(1);
    });

    it('answers a duplicate with another body the conflict once the first has committed', async () => {
      const key = randomUUID();
      const gate = `tx-conflict-${key}`;
      const original = post(first, `/held/ledger/${gate}`, key, { note: randomUUID() });
      await waitFor(() => first.probe.count(`ledger:${gate}`) === 1);
      const other = post(second, `/held/ledger/${gate}`, key, { note: randomUUID() });
      await sleep(200);
      first.probe.gate(gate).open();
      await original;
      expect((await other).json.error.code).toBe('idempotency_key_conflict');
    });
  });
});
