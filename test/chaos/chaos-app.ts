// The app under chaos, run in a process of its own (test/chaos/run.ts starts three of them, and
// test/chaos/faults.e2e-spec.ts kills one mid-request). Every execution of a handler is a business
// side effect that can be counted in the database: one `effects` row, written
//   - POST /<route>/tx      inside the module's transaction (@Idempotent({ transactional: true })),
//   - POST /<route>/leased  through the ordinary pool of the DataSource (@Idempotent(), leased mode),
// then, after the handler's delay (header `x-chaos-delay-ms`), marked done the same way. <route> is
// `effects` (no interceptor of the app's own), `held` (an outer async interceptor holds the answer a
// moment) or `timed` (Nest's documented timeout interceptor answers 408 after TIMEOUT_MS). The
// answer embeds the caller's scope and the id of this execution, so the runner can tell which
// execution (and which caller) an answer belongs to. On Fastify, an `onRequest` hook sets
// `x-request-id` (the caller's, or a new one) and an async `onSend` hook delays every answer.
//
// Env: DATABASE_URL; CHAOS_INSTANCE (name), CHAOS_EPOCH (id of this process), CHAOS_PLATFORM
// (express|fastify), CHAOS_PORT (0: any), CHAOS_LEASE_MS, CHAOS_HANG=1 (every handler writes its
// effect, prints `RUNNING <key>` and never answers: a process to SIGKILL mid-request), CHAOS_LOGS=1, and
// CHAOS_SABOTAGE to prove the runner's checks catch what they claim to:
//   shared-scope      every caller shares one scope                    → cross_scope_replays, mismatched_replays
//   raw-token         the scope is the raw bearer token                 → raw_tokens_stored
//   double-effect     the leased handler writes twice                   → duplicate_effects
//   idle-transaction  1 in 20 leased handlers leave a transaction open  → open_transactions_after
import 'reflect-metadata';
import {
  Body,
  type CallHandler,
  Controller,
  type ExecutionContext,
  HttpException,
  Injectable,
  Module,
  type NestInterceptor,
  Post,
  Req,
  ServiceUnavailableException,
  type Type,
  UseInterceptors,
  type LogLevel,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomInt, randomUUID } from 'node:crypto';
import diagnostics_channel from 'node:diagnostics_channel';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { type Observable, mergeMap } from 'rxjs';
import { DataSource, type EntityManager } from 'typeorm';
import { IDEMPOTENCY_CHANNELS, Idempotent, IdempotencyModule, IdempotencyTransaction, bearerTokenScope, type IdempotencyEvent, type IdempotencyModuleOptions } from '../../src';
import { timeoutInterceptor } from '../support/timeout-interceptor';
import { DELAY_HEADER, isConnectivityError, type EffectRequest } from './effects';

const INSTANCE = process.env.CHAOS_INSTANCE ?? 'solo';
const EPOCH = process.env.CHAOS_EPOCH ?? randomUUID();
/** Shorter than the slowest handlers (0.1-0.4 s and 2.5-3.2 s), which then outlive their 408. */
const TIMEOUT_MS = 250;

type Query = (sql: string, values: unknown[]) => Promise<unknown>;

const INSERT_EFFECT = `INSERT INTO effects (mode, scope, idem_key, execution, epoch, instance, request_id)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)`;

/** An outer interceptor that still works after the handler answered (auditing, mapping): 5-50 ms. */
@Injectable()
class HoldInterceptor implements NestInterceptor {
  intercept(_context: ExecutionContext, next: CallHandler): Observable<unknown> {
    return next.handle().pipe(
      mergeMap(async (value) => {
        await sleep(randomInt(5, 51));
        return value;
      }),
    );
  }
}

/** The two routes under `prefix`, behind the controller-level `interceptors`. */
function effectsController(prefix: string, ...interceptors: Type<NestInterceptor>[]): Type {
  @Controller(prefix)
  @UseInterceptors(...interceptors)
  class EffectsController {
    constructor(private readonly dataSource: DataSource) {}

    @Post('tx') @Idempotent({ transactional: true })
    tx(@Body() body: EffectRequest, @Req() request: unknown, @IdempotencyTransaction() manager: EntityManager) {
      return execute('tx', body, request, (sql, values) => manager.query(sql, values));
    }

    @Post('leased') @Idempotent()
    async leased(@Body() body: EffectRequest, @Req() request: unknown) {
      if (process.env.CHAOS_SABOTAGE === 'idle-transaction' && Math.random() < 0.05) await leaveTransactionOpen();
      return execute('leased', body, request, (sql, values) => this.dataSource.query(sql, values));
    }
  }
  return EffectsController;
}

async function execute(mode: 'tx' | 'leased', body: EffectRequest, request: any, query: Query) {
  const scope = bearerTokenScope(request) ?? null;
  const headers = (request.raw ?? request).headers as Record<string, string | undefined>;
  const key = headers['idempotency-key'] ?? null;
  const delayMs = Number(headers[DELAY_HEADER] ?? 0);
  const execution = randomUUID();
  const requestId = headers['x-request-id'] ?? null;
  const writes = mode === 'leased' && process.env.CHAOS_SABOTAGE === 'double-effect' ? 2 : 1;
  for (let i = 0; i < writes; i++) {
    await write(query, INSERT_EFFECT, [mode, scope ?? '', key, execution, EPOCH, INSTANCE, requestId]);
  }
  const answer = { mode, scope, key, item: body?.item ?? null, execution, instance: INSTANCE, epoch: EPOCH };
  if (process.env.CHAOS_HANG === '1') {
    process.stdout.write(`RUNNING ${key}\n`);
    await new Promise(() => undefined);
  }
  if (delayMs > 0) await sleep(delayMs);
  // A transactional handler still sends this on its request's transaction after a 408 or a hang-up:
  // it must go nowhere.
  await write(query, 'UPDATE effects SET done_at = clock_timestamp() WHERE execution = $1', [execution]);
  if (body?.reject) throw new HttpException({ rejected: true, ...answer }, 422);
  return answer;
}

async function write(query: Query, sql: string, values: unknown[]): Promise<void> {
  try {
    await query(sql, values);
  } catch (error) {
    if (isConnectivityError(error)) throw new ServiceUnavailableException({ error: { code: 'database_unavailable' } });
    throw error;
  }
}

/** CHAOS_SABOTAGE=idle-transaction: a connection of its own left idle in a transaction. */
async function leaveTransactionOpen(): Promise<void> {
  const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
  client.on('error', () => undefined);
  await client.connect();
  await client.query('BEGIN');
  await client.query('SELECT 1');
}

/** Fastify with hooks of the kind plugins add: a request id on every reply, and an async onSend. */
function fastifyWithHooks(): FastifyAdapter {
  const adapter = new FastifyAdapter();
  const fastify = adapter.getInstance();
  fastify.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.headers['x-request-id'] ?? randomUUID());
  });
  fastify.addHook('onSend', async (_request, _reply, payload) => {
    await sleep(randomInt(0, 21));
    return payload;
  });
  return adapter;
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
    controllers: [
      effectsController('effects'),
      effectsController('held', HoldInterceptor),
      effectsController('timed', timeoutInterceptor(TIMEOUT_MS)),
    ],
  })
  class ChaosModule {}

  // Events that explain a leased re-execution or an answer that was sent but not stored,
  // and the claims, which show whether a record was ever taken over.
  for (const name of ['claimed', 'store_error', 'lease_lost', 'released'] as const) {
    diagnostics_channel.subscribe(IDEMPOTENCY_CHANNELS[name], (message) => {
      const event = message as IdempotencyEvent;
      process.stdout.write(`EVENT ${event.name} ${event.keyHash ?? '-'} ${event.status ?? '-'} ${Date.now()}\n`);
    });
  }

  const logger: LogLevel[] | false = process.env.CHAOS_LOGS === '1' ? ['error', 'warn'] : false;
  const app =
    process.env.CHAOS_PLATFORM === 'fastify'
      ? await NestFactory.create(ChaosModule, fastifyWithHooks(), { logger })
      : await NestFactory.create(ChaosModule, { logger });
  await app.listen(Number(process.env.CHAOS_PORT ?? 0), '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  process.stdout.write(`READY http://127.0.0.1:${port}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`chaos app failed to start: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
