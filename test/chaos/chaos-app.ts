// The app under chaos, run in a process of its own (test/chaos/run.ts starts three of them, and
// test/chaos/faults.e2e-spec.ts kills one mid-request). Every execution of a handler is a business
// side effect that can be counted in the database: one `effects` row, written
//   - POST /effects/tx      inside the module's transaction (@Idempotent({ transactional: true })),
//   - POST /effects/leased  through the ordinary pool of the DataSource (@Idempotent(), leased mode).
// The answer embeds the caller's scope and the id of this execution, so the runner can tell which
// execution (and which caller) an answer belongs to.
//
// Env: DATABASE_URL; CHAOS_INSTANCE (name), CHAOS_EPOCH (id of this process), CHAOS_PLATFORM
// (express|fastify), CHAOS_PORT (0: any), CHAOS_LEASE_MS, CHAOS_HANG=1 (every handler writes its
// effect, prints `RUNNING <key>` and never answers: a process to SIGKILL mid-request), CHAOS_LOGS=1, and
// CHAOS_SABOTAGE to prove the runner's checks catch what they claim to:
//   shared-scope   every caller shares one scope       → cross_scope_replays, mismatched_replays
//   raw-token      the scope is the raw bearer token    → raw_tokens_stored
//   double-effect  the leased handler writes twice      → duplicate_effects
import 'reflect-metadata';
import { Body, Controller, HttpException, Module, Post, Req, ServiceUnavailableException, type LogLevel } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import diagnostics_channel from 'node:diagnostics_channel';
import type { AddressInfo } from 'node:net';
import { DataSource, type EntityManager } from 'typeorm';
import { IDEMPOTENCY_CHANNELS, Idempotent, IdempotencyModule, IdempotencyTransaction, bearerTokenScope, type IdempotencyEvent, type IdempotencyModuleOptions } from '../../src';
import { isConnectivityError, type EffectRequest } from './effects';

const INSTANCE = process.env.CHAOS_INSTANCE ?? 'solo';
const EPOCH = process.env.CHAOS_EPOCH ?? randomUUID();

type Query = (sql: string, values: unknown[]) => Promise<unknown>;

@Controller('effects')
class EffectsController {
  constructor(private readonly dataSource: DataSource) {}

  @Post('tx') @Idempotent({ transactional: true })
  tx(@Body() body: EffectRequest, @Req() request: unknown, @IdempotencyTransaction() manager: EntityManager) {
    return this.execute('tx', body, request, (sql, values) => manager.query(sql, values));
  }

  @Post('leased') @Idempotent()
  leased(@Body() body: EffectRequest, @Req() request: unknown) {
    return this.execute('leased', body, request, (sql, values) => this.dataSource.query(sql, values));
  }

  private async execute(mode: 'tx' | 'leased', body: EffectRequest, request: any, query: Query) {
    const scope = bearerTokenScope(request) ?? null;
    const headers = (request.raw ?? request).headers as Record<string, string | undefined>;
    const key = headers['idempotency-key'] ?? null;
    const execution = randomUUID();
    const writes = mode === 'leased' && process.env.CHAOS_SABOTAGE === 'double-effect' ? 2 : 1;
    try {
      for (let i = 0; i < writes; i++) {
        await query('INSERT INTO effects (mode, scope, idem_key, execution, epoch, instance) VALUES ($1, $2, $3, $4, $5, $6)', [
          mode,
          scope ?? '',
          key,
          execution,
          EPOCH,
          INSTANCE,
        ]);
      }
    } catch (error) {
      if (isConnectivityError(error)) throw new ServiceUnavailableException({ error: { code: 'database_unavailable' } });
      throw error;
    }
    const answer = { mode, scope, key, item: body?.item ?? null, execution, instance: INSTANCE, epoch: EPOCH };
    if (process.env.CHAOS_HANG === '1') {
      process.stdout.write(`RUNNING ${key}\n`);
      await new Promise(() => undefined);
    }
    if (body?.delayMs) await new Promise((resolve) => setTimeout(resolve, body.delayMs));
    if (body?.reject) throw new HttpException({ rejected: true, ...answer }, 422);
    return answer;
  }
}

function sabotage(): IdempotencyModuleOptions {
  switch (process.env.CHAOS_SABOTAGE) {
    case 'shared-scope':
      return { scope: () => 'everyone' };
    case 'raw-token':
      return { scope: (request: any) => /^Bearer (.+)$/i.exec((request.raw ?? request).headers.authorization ?? '')?.[1] };
    default:
      return {};
  }
}

async function main(): Promise<void> {
  const lease = Number(process.env.CHAOS_LEASE_MS ?? 2000);

  @Module({
    imports: [
      TypeOrmModule.forRoot({
        type: 'postgres',
        url: process.env.DATABASE_URL,
        autoLoadEntities: true,
        // The schema is created once by whoever starts the instances: concurrent migrations of
        // three instances booting together would race.
        migrationsRun: false,
        // Generous: on 2 busy cores a new connection (SCRAM) can take over a second to open, and a
        // timeout here is answered 503 like an outage. Refused connections still fail at once.
        extra: { max: 10, connectionTimeoutMillis: 5000 },
      }),
      IdempotencyModule.forRoot({ lease, ...sabotage() }),
    ],
    controllers: [EffectsController],
  })
  class ChaosModule {}

  // Events that explain a leased re-execution or an answer that was sent but not stored (SPEC W12),
  // and the claims, which show whether a record was ever taken over.
  for (const name of ['claimed', 'store_error', 'lease_lost', 'released'] as const) {
    diagnostics_channel.subscribe(IDEMPOTENCY_CHANNELS[name], (message) => {
      const event = message as IdempotencyEvent;
      process.stdout.write(`EVENT ${event.name} ${event.keyHash ?? '-'} ${event.status ?? '-'}\n`);
    });
  }

  const logger: LogLevel[] | false = process.env.CHAOS_LOGS === '1' ? ['error', 'warn'] : false;
  const app =
    process.env.CHAOS_PLATFORM === 'fastify'
      ? await NestFactory.create(ChaosModule, new FastifyAdapter(), { logger })
      : await NestFactory.create(ChaosModule, { logger });
  await app.listen(Number(process.env.CHAOS_PORT ?? 0), '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  process.stdout.write(`READY http://127.0.0.1:${port}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`chaos app failed to start: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
