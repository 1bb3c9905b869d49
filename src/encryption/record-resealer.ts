import type { Pool } from 'pg';
import type { DataSource } from 'typeorm';
import { IdempotencyConfigurationError } from '../idempotency.exceptions';
import type { ResolvedEncryption } from './encryption-options';
import { SEALED_HEAD_BYTES, SEALED_MARKER, remask } from './record-sealer';

/**
 * The next batch of live records sealed under another key than $1, after ($2, $3) in primary key
 * order: a walk over the primary key that never sees a record twice, even one it had to skip.
 */
const NEXT_BATCH = `
  SELECT api_key_id, idem_key, fence, response_headers->>'${SEALED_MARKER}' AS key_id,
         substring(response_body FROM 1 FOR ${SEALED_HEAD_BYTES}) AS head
  FROM idempotency_keys
  WHERE (api_key_id, idem_key) > ($2::text, $3::varchar) AND response_status IS NOT NULL AND expires_at > now()
    AND response_headers ? '${SEALED_MARKER}' AND response_headers->>'${SEALED_MARKER}' <> $1
  ORDER BY api_key_id, idem_key
  LIMIT $4`;

/**
 * Rewrites the head of each record of a batch, unless the record changed since it was read (taken
 * over, or re-sealed by someone else): its fence and its head must still be those read.
 */
const RESEAL_BATCH = `
  UPDATE idempotency_keys AS k
  SET response_headers = jsonb_build_object('${SEALED_MARKER}', $2::text),
      response_body = overlay(k.response_body PLACING decode(v.head, 'hex') FROM 1)
  FROM jsonb_to_recordset($1::jsonb) AS v(scope text, key varchar, fence integer, key_id text, old_head text, head text)
  WHERE k.api_key_id = v.scope AND k.idem_key = v.key AND k.fence = v.fence
    AND k.response_headers->>'${SEALED_MARKER}' = v.key_id
    AND substring(k.response_body FROM 1 FOR ${SEALED_HEAD_BYTES}) = decode(v.old_head, 'hex')`;

/**
 * Re-seals live records under the newest key of the ring, in bounded batches, each one statement of
 * its own: no lock outlives a batch, and replays meanwhile open either version. Only the masked data
 * key at the head of each body is rewritten, inside PostgreSQL; bodies never travel.
 */
export class RecordResealer {
  constructor(
    private readonly dataSource: DataSource,
    private readonly encryption: ResolvedEncryption | undefined,
  ) {}

  /** Re-seals every live record sealed under an older key that the ring still lists; returns how many. */
  async reseal(batchSize: number): Promise<number> {
    if (!this.encryption) {
      throw new IdempotencyConfigurationError('IdempotencyService.reencrypt() needs the "encryption" option (new key first).');
    }
    const { keys, sealingKey } = this.encryption;
    const pool = (this.dataSource.driver as unknown as { master: Pool }).master;
    let after = ['', ''];
    let total = 0;
    for (;;) {
      const { rows } = await pool.query(NEXT_BATCH, [sealingKey.id, ...after, batchSize]);
      if (rows.length === 0) return total;
      after = [rows[rows.length - 1].api_key_id, rows[rows.length - 1].idem_key];
      // A key the ring no longer lists cannot be unmasked: such a record stays unreadable.
      const batch = rows
        .filter((row) => keys.has(row.key_id) && row.head.length === SEALED_HEAD_BYTES)
        .map(({ api_key_id: scope, idem_key: key, fence, key_id, head }) => ({
          scope,
          key,
          fence,
          key_id,
          old_head: head.toString('hex'),
          head: remask(head, scope, key, keys.get(key_id)!, sealingKey.secret).toString('hex'),
        }));
      if (batch.length === 0) continue;
      total += (await pool.query(RESEAL_BATCH, [JSON.stringify(batch), sealingKey.id])).rowCount ?? 0;
      if (rows.length < batchSize) return total;
    }
  }
}
