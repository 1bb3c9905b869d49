import { randomUUID } from 'node:crypto';
import type { DataSource } from 'typeorm';
import type { ClaimRequest } from '../src/store/idempotency.store';
import { PostgresIdempotencyStore } from '../src/store/postgres-idempotency.store';
import { claimedOwner, migratedDataSource } from './support/store-harness';
import { createTestDatabase, type TestDatabase } from './support/test-database';

// A released claim is over: a renewal or a completion its owner had already sent when it released
// the key must not bring the claim back, so the next request with the key runs at once.
describe('A release ends the ownership of a claim', () => {
  let database: TestDatabase;
  let dataSource: DataSource;
  let store: PostgresIdempotencyStore;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataSource = await migratedDataSource(database.url);
    store = new PostgresIdempotencyStore(dataSource);
  });
  afterAll(async () => {
    await dataSource?.destroy();
    await database?.drop();
  });

  const request = (key: string, fingerprint = 'a'.repeat(64)): ClaimRequest => ({
    scope: 'scope',
    key,
    fingerprint,
    lease: 60_000,
    ttl: 60_000,
  });
  const late = { status: 201, headers: {}, body: Buffer.from('late') };
  const released = { leaseOver: true, expired: true, responseStatus: null };
  const record = async (key: string) =>
    (
      await dataSource.query(
        `SELECT lease_expires_at <= now() AS "leaseOver", expires_at <= now() AS expired,
                response_status AS "responseStatus"
         FROM idempotency_keys WHERE api_key_id = 'scope' AND idem_key = $1`,
        [key],
      )
    )[0];

  it('refuses a renewal and a completion sent after the release, and lets the next claim take the key', async () => {
    const key = randomUUID();
    const claimed = claimedOwner(await store.claim(request(key)));
    expect(await store.release(claimed)).toBe(true);

    expect(await store.renew(claimed, 60_000)).toBe(false);
    expect(await record(key)).toEqual(released);

    expect(await store.complete(claimed, late)).toBe(false);
    expect(await record(key)).toEqual(released);

    const next = claimedOwner(await store.claim(request(key)));
    expect(next.fence).not.toBe(claimed.fence);
  });

  it('refuses a completion sent after the release: the record stays released', async () => {
    const key = randomUUID();
    const claimed = claimedOwner(await store.claim(request(key)));
    expect(await store.release(claimed)).toBe(true);
    expect(await store.complete(claimed, late)).toBe(false);
    expect(await record(key)).toEqual(released);
  });

  it('lets the next claim take a released key whatever its fingerprint', async () => {
    const key = randomUUID();
    expect(await store.release(claimedOwner(await store.claim(request(key))))).toBe(true);
    expect((await store.claim(request(key, 'b'.repeat(64)))).kind).toBe('claimed');
  });

  it('refuses a second release of the same claim', async () => {
    const claimed = claimedOwner(await store.claim(request(randomUUID())));
    expect(await store.release(claimed)).toBe(true);
    expect(await store.release(claimed)).toBe(false);
  });
});
