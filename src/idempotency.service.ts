import { Inject, Injectable } from '@nestjs/common';
import { RecordResealer } from './encryption/record-resealer';
import type { ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from './idempotency-options';
import { publishEvent } from './idempotency-events';
import { IdempotencyStore } from './store/idempotency.store';

/** User-facing operations on the idempotency records. */
@Injectable()
export class IdempotencyService {
  constructor(
    private readonly store: IdempotencyStore,
    private readonly resealer: RecordResealer,
    @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions,
  ) {}

  /**
   * Deletes every expired record that no live claim holds, in batches, and returns how many. While
   * another instance purges a batch, waits its turn, or with `skipIfBusy` stops and leaves the rest to it.
   */
  async purgeExpired(options: { skipIfBusy?: boolean } = {}): Promise<number> {
    const startedAt = performance.now();
    const count = await this.store.purgeExpired({ batchSize: this.options.purgeBatchSize, skipIfBusy: options.skipIfBusy ?? false });
    publishEvent('purged', undefined, { count, durationMs: performance.now() - startedAt });
    return count;
  }

  /**
   * Re-seals every live record sealed under an older key of `encryption.keys` under the first key,
   * in batches of `batchSize` (default `purgeBatchSize`), while traffic goes on; returns how many.
   * Once it has run after every instance seals with the new key, older keys can leave the ring.
   */
  reencrypt(options: { batchSize?: number } = {}): Promise<number> {
    return this.resealer.reseal(options.batchSize ?? this.options.purgeBatchSize);
  }
}
