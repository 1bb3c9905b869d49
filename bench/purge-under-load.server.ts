/**
 * The app of `npm run bench:purge` and `npm run bench:scale`, in its own process (forked through
 * bench/purge-app.ts, which talks to it over IPC): one `@Idempotent()` route, and `{ type: 'purge' }`
 * runs `IdempotencyService.purgeExpired()` in this process, as the module's scheduled task would.
 *
 * Env: DATABASE_URL, PURGE_BATCH_SIZE (the module's `purgeBatchSize`, default the module's).
 */
import 'reflect-metadata';
import { Body, Controller, Module, Post } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { AddressInfo } from 'node:net';
import { IdempotencyModule, IdempotencyService, Idempotent } from '../src';

@Controller()
class PaymentsController {
  private n = 0;

  @Post('payments') @Idempotent()
  create(@Body() body: { amount?: unknown; currency?: unknown }) {
    return { id: `pay_${++this.n}`, object: 'payment', amount: body.amount, currency: body.currency, status: 'succeeded' };
  }
}

async function main(): Promise<void> {
  const batchSize = process.env.PURGE_BATCH_SIZE ? Number(process.env.PURGE_BATCH_SIZE) : undefined;

  @Module({
    imports: [
      TypeOrmModule.forRoot({ type: 'postgres', url: process.env.DATABASE_URL, autoLoadEntities: true, extra: { max: 10 } }),
      // The scheduled purge is off: the orchestrator starts the one purge it measures.
      IdempotencyModule.forRoot({ purgeInterval: 0, purgeBatchSize: batchSize }),
    ],
    controllers: [PaymentsController],
  })
  class PurgeBenchModule {}

  const app = await NestFactory.create(PurgeBenchModule, { logger: ['error', 'warn'] });
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  process.on('message', (message: { type: string }) => {
    if (message.type !== 'purge') return;
    const startedAt = performance.now();
    app
      .get(IdempotencyService)
      .purgeExpired()
      .then(
        (count) => process.send!({ type: 'purged', count, ms: performance.now() - startedAt }),
        (error: unknown) => process.send!({ type: 'purge-failed', error: String(error) }),
      );
  });
  process.on('disconnect', () => void app.close().finally(() => process.exit(0)));
  process.send!({ type: 'ready', port });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
