import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import type { ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from './idempotency-options';
import { IdempotencyService } from './idempotency.service';

/**
 * The scheduled purge: an interval the module starts and stops itself, so the host needs no
 * ScheduleModule. A run never starts while the previous one still runs, and stops as soon as it
 * finds another instance holding the purge lock.
 */
@Injectable()
export class IdempotencyPurgeTask implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('Idempotency');
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;

  constructor(
    private readonly service: IdempotencyService,
    @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions,
  ) {}

  onApplicationBootstrap(): void {
    if (this.options.purgeInterval === 0) return;
    this.timer = setInterval(() => {
      this.running ??= this.purge().finally(() => (this.running = undefined));
    }, this.options.purgeInterval);
    this.timer.unref();
  }

  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  private async purge(): Promise<void> {
    try {
      const purged = await this.service.purgeExpired({ skipIfBusy: true });
      if (purged > 0) this.logger.debug?.(`Purged ${purged} expired idempotency records.`);
    } catch (error) {
      this.logger.warn(`Scheduled purge failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
}
