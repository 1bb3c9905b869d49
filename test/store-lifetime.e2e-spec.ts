import { jest } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import type { DataSource } from 'typeorm';
import type { ClaimRequest } from '../src/store/idempotency.store';
import { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import { claimedOwner, migratedDataSource } from './support/store-harness';
import { createTestDatabase, type TestDatabase } from './support/test-database';

const LEASE = 10_000;
const TTL = 600_000;

/** Fakes only Date: the app's clock jumps, timers and the event loop run as usual. */
const appClockAt = (now: number) =>
  jest.useFakeTimers({
    now,
    doNotFake: ['nextTick', 'setImmediate', 'setTimeout', 'setInterval', 'clearTimeout', 'clearInterval',
      'clearImmediate', 'queueMicrotask', 'hrtime', 'performance'],
  });

// A record's TTL runs from its first claim, and leases and expiry are set by the database clock,
// whichever statement claims or completes the record: alone, in a batch, or taking a record over.
describe('The lifetime of a record in the store', () => {
  let database: TestDatabase;
  let dataSource: DataSource;
  let store: PostgresIdempotencyStore;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = await migratedDataSource(database.url);
    store = new PostgresIdempotencyStore(dataSource);
  });
  afterAll(async () => {
    jest.useRealTimers();
    await dataSource?.destroy();
    await database?.drop();
  });

  const request = (): ClaimRequest => ({
    scope: 'scope',
    key: randomUUID(),
    fingerprint: 'f'.repeat(64),
    lease: LEASE,
    ttl: TTL,
  });
  /** The record's lease and expiry in ms from the database's now(), and its expiry as text. */
  const record = async ({ key }: { key: string }) => {
    const [row] = await dataSource.query(
      `SELECT extract(epoch FROM lease_expires_at - now()) * 1000 AS lease_left,
              extract(epoch FROM expires_at - now()) * 1000 AS ttl_left, expires_at::text AS expires_at
       FROM idempotency_keys WHERE api_key_id = 'scope' AND idem_key = $1`,
      [key],
    );
    return { leaseLeft: Number(row.lease_left), ttlLeft: Number(row.ttl_left), expiresAt: row.expires_at as string };
  };

  it('keeps the expiry of the first claim when the record completes, alone or in a batch', async () => {
    const requests = [request(), request(), request()];
    const owners = (await Promise.all(requests.map((each) => store.claim(each)))).map(claimedOwner);
    const claimed = await Promise.all(requests.map(record));
    await new Promise((resolve) => setTimeout(resolve, 300));
    // Two small bodies in one turn share one statement; a body over 64 KiB is stored alone.
    const bodies = [Buffer.from('a'), Buffer.from('b'), Buffer.alloc(100 * 1024, 'c')];
    const stored = await Promise.all(
      owners.map((each, index) => store.complete(each, { status: 201, headers: {}, body: bodies[index] })),
    );
    expect(stored).toEqual([true, true, true]);
    const completed = await Promise.all(requests.map(record));
    expect(completed.map(({ expiresAt }) => expiresAt)).toEqual(claimed.map(({ expiresAt }) => expiresAt));
  });

  it('sets leases and expiry by the database clock, not the app clock an hour ahead', async () => {
    const released = request();
    expect(await store.release(claimedOwner(await store.claim(released)))).toBe(true);
    appClockAt(Date.now() + 3600_000);
    try {
      // A key claimed alone, two claimed in one turn (one statement), and a released one taken over.
      const alone = request();
      const batch = [request(), request()];
      claimedOwner(await store.claim(alone));
      (await Promise.all(batch.map((each) => store.claim(each)))).forEach(claimedOwner);
      claimedOwner(await store.claim(released));
      for (const claimed of [alone, ...batch, released]) {
        const { leaseLeft, ttlLeft } = await record(claimed);
        expect(leaseLeft).toBeGreaterThan(LEASE - 5_000);
        expect(leaseLeft).toBeLessThanOrEqual(LEASE);
        expect(ttlLeft).toBeGreaterThan(TTL - 5_000);
        expect(ttlLeft).toBeLessThanOrEqual(TTL);
      }
    } finally {
      jest.useRealTimers();
    }
  });
});
