import type { DataSource } from 'typeorm';

/** Which completed records `insertCompletedRecords` writes. */
export interface CompletedRecords {
  /** The first key's number: the keys are `key-<from>` … `key-<to>`. @default 1 */
  from?: number;
  to: number;
  /** Spread over this many scopes, `scope-0` … (and so over the partitions of a partitioned table). */
  scopes: number;
  /** Expired an hour ago, or expiring in an hour. */
  expired: boolean;
}

/** Writes completed records straight into `idempotency_keys`, without claiming them. */
export function insertCompletedRecords(
  dataSource: DataSource,
  { from = 1, to, scopes, expired }: CompletedRecords,
): Promise<unknown> {
  return dataSource.query(
    `INSERT INTO idempotency_keys (api_key_id, idem_key, fingerprint, fence, expires_at, created_at,
                                   response_status, response_headers, response_body)
     SELECT 'scope-' || (i % $3::integer), 'key-' || i, repeat('f', 64), 1,
            now() + $4::interval, now() - interval '2 hours', 200, '{}'::jsonb, '\\x78'::bytea
     FROM generate_series($1::integer, $2::integer) AS i`,
    [from, to, scopes, expired ? '-1 hour' : '1 hour'],
  );
}
