/**
 * One app under test, run in its own process (forked by the orchestrator, which talks to it over
 * IPC). The same controllers in every app; the only difference between the two apps of a platform
 * is whether `IdempotencyModule` is imported, with the controller of the routes marked `@Idempotent()`
 * (placed among the others as BenchAppModule says).
 *
 * Env: BENCH_PLATFORM=express|fastify, BENCH_MODULE=1|0, DATABASE_URL, BENCH_MAX_RESPONSE_BYTES,
 * BENCH_ENCRYPTION=1 (the module with `encryption`).
 */
import 'reflect-metadata';
import {
  BadRequestException,
  Body,
  type CallHandler,
  ConflictException,
  Controller,
  type DynamicModule,
  type ExecutionContext,
  Inject,
  Injectable,
  Module,
  type NestInterceptor,
  NotFoundException,
  Post,
  Req,
  Res,
  UseInterceptors,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { TypeOrmModule } from '@nestjs/typeorm';
import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { Pool } from 'pg';
import { IdempotencyModule, Idempotent } from '../src';
import {
  BENCH_RECORD_KEY,
  BIG_RESPONSE_BYTES,
  NAIVE_TABLE,
  naiveFingerprint,
  payment,
  sizedPayment,
  type Platform,
  type ServerRequest,
  type ServerStats,
} from './common';

const NAIVE_POOL = Symbol('naive-pool');
const JSON_TYPE = 'application/json; charset=utf-8';
const PADDING = 'x'.repeat(BIG_RESPONSE_BYTES);

@Injectable()
class Counter {
  readonly calls: Record<string, number> = {};
  next(route: string): string {
    const n = (this.calls[route] = (this.calls[route] ?? 0) + 1);
    return `pay_${route}_${n}`;
  }
}

/** The handler under test, without `@Idempotent()`: in both apps. */
@Controller()
class PaymentsController {
  constructor(private readonly counter: Counter) {}

  @Post('plain/payments')
  plain(@Body() body: Record<string, unknown>) {
    return payment(this.counter.next('plain'), body);
  }

  @Post('big/plain')
  bigPlain(@Body() body: Record<string, unknown>) {
    return { ...payment(this.counter.next('big-plain'), body), padding: PADDING };
  }
}

/** The same handler with `@Idempotent()`: only in the app that imports the module. */
@Controller()
class IdempotentPaymentsController {
  constructor(private readonly counter: Counter) {}

  @Post('payments') @Idempotent()
  create(@Body() body: Record<string, unknown>) {
    return payment(this.counter.next('payments'), body);
  }

  /** The module's transactional mode: claim, handler and stored response in one transaction. */
  @Post('payments/transactional') @Idempotent({ transactional: true })
  createTransactional(@Body() body: Record<string, unknown>) {
    return payment(this.counter.next('transactional'), body);
  }

  /** The encryption pairs: the same route in the module's app with and without `encryption`. */
  @Post('payments/sized') @Idempotent()
  sized(@Body() body: Record<string, unknown>) {
    return sizedPayment(this.counter.next('sized'), body);
  }

  @Post('big/payments') @Idempotent()
  big(@Body() body: Record<string, unknown>) {
    return { ...payment(this.counter.next('big'), body), padding: PADDING };
  }
}

// The hand-written baseline: one transaction holding the key while the handler runs.
const NAIVE_INSERT = {
  name: 'naive_insert',
  text: `INSERT INTO ${NAIVE_TABLE} (api_key_id, idem_key, fingerprint, fence, lease_expires_at, expires_at, created_at)
         VALUES ($1, $2, $3, 1, now() + interval '30 seconds', now() + interval '1 day', now())
         ON CONFLICT DO NOTHING RETURNING fence`,
};
const NAIVE_COMPLETE = {
  name: 'naive_complete',
  text: `UPDATE ${NAIVE_TABLE} SET response_status = $3, response_headers = $4, response_body = $5, completed_at = now(), lease_expires_at = NULL
         WHERE api_key_id = $1 AND idem_key = $2`,
};
const NAIVE_SELECT = {
  name: 'naive_select',
  text: `SELECT fingerprint, response_status, response_headers, response_body FROM ${NAIVE_TABLE} WHERE api_key_id = $1 AND idem_key = $2`,
};

interface Reply {
  status(code: number): Reply;
  header(name: string, value: string): Reply;
  send(body: Buffer | string): unknown;
}

function send(reply: Reply, status: number, headers: Record<string, string>, body: Buffer): void {
  reply.status(status);
  for (const [name, value] of Object.entries(headers)) reply.header(name, value);
  reply.send(body);
}

function keyAndScope(request: any): { key: string; scope: string } | null {
  const headers = (request.raw ?? request).headers;
  const key = headers['idempotency-key'];
  const token = /^Bearer (.+)$/.exec(headers.authorization ?? '')?.[1];
  if (typeof key !== 'string' || !token) return null;
  return { key, scope: createHash('sha256').update(token).digest('hex') };
}

/** An interceptor that does nothing: any interceptor on a route makes Nest run its Observable pipeline there. */
@Injectable()
class PassThroughInterceptor implements NestInterceptor {
  intercept(_context: ExecutionContext, next: CallHandler) {
    return next.handle();
  }
}

// BENCH_NAIVE=intercepted: the baseline's routes pay what Nest charges a route for having an
// interceptor at all, which the module, being one, cannot avoid.
const NAIVE_INTERCEPTORS = process.env.BENCH_NAIVE === 'intercepted' ? [PassThroughInterceptor] : [];

/**
 * The hand-written baseline, answering through Nest's reply path like the bare handler and the
 * module do (the handler returns its value; the replay returns the stored JSON text). Its two
 * routes are two controllers, so that the module's route can sit between them (see BenchAppModule).
 */
@Controller('naive') @UseInterceptors(...NAIVE_INTERCEPTORS)
class NaivePaymentsController {
  constructor(
    private readonly counter: Counter,
    @Inject(NAIVE_POOL) private readonly pool: Pool,
  ) {}

  /** BEGIN; INSERT … ON CONFLICT DO NOTHING RETURNING; handler; UPDATE with the response; COMMIT. */
  @Post('payments')
  async create(@Req() request: any, @Res({ passthrough: true }) reply: Reply) {
    const id = keyAndScope(request);
    if (!id) throw new BadRequestException('key and bearer token required');
    const body = request.body;
    const fingerprint = naiveFingerprint('POST', request.url, body);
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const inserted = await client.query({ ...NAIVE_INSERT, values: [id.scope, id.key, fingerprint] });
      if (inserted.rowCount === 0) {
        await client.query('ROLLBACK');
        const [row] = (await client.query({ ...NAIVE_SELECT, values: [id.scope, id.key] })).rows;
        if (!row || row.fingerprint !== fingerprint || row.response_status === null) throw new ConflictException();
        return answerStored(reply, row);
      }
      const result = payment(this.counter.next('naive'), body);
      await client.query({ ...NAIVE_COMPLETE, values: [id.scope, id.key, 201, { 'content-type': JSON_TYPE }, Buffer.from(JSON.stringify(result))] });
      await client.query('COMMIT');
      return result;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
  }
}

@Controller('naive') @UseInterceptors(...NAIVE_INTERCEPTORS)
class NaiveReplayController {
  constructor(@Inject(NAIVE_POOL) private readonly pool: Pool) {}

  /** The baseline's replay: one SELECT by key. */
  @Post('replay')
  async replay(@Req() request: any, @Res({ passthrough: true }) reply: Reply) {
    const id = keyAndScope(request);
    if (!id) throw new BadRequestException('key and bearer token required');
    const fingerprint = naiveFingerprint('POST', request.url, request.body);
    const [row] = (await this.pool.query({ ...NAIVE_SELECT, values: [id.scope, id.key] })).rows;
    if (!row) throw new NotFoundException('unknown key');
    if (row.fingerprint !== fingerprint) throw new ConflictException();
    return answerStored(reply, row);
  }
}

function answerStored(reply: Reply, row: { response_status: number; response_headers: Record<string, string>; response_body: Buffer }): string {
  reply.status(row.response_status);
  for (const [name, value] of Object.entries({ ...row.response_headers, 'idempotency-replayed': 'true' })) reply.header(name, value);
  return row.response_body.toString();
}

/**
 * The same baseline writing its answers itself (`@Res()`), past Nest's reply path: what a
 * hand-written version can save over anything that runs inside Nest's pipeline (BENCH_NAIVE=raw).
 */
@Controller('naive-raw')
class RawNaiveController {
  constructor(
    private readonly counter: Counter,
    @Inject(NAIVE_POOL) private readonly pool: Pool,
  ) {}

  @Post('payments')
  async create(@Req() request: any, @Res() reply: Reply) {
    const id = keyAndScope(request);
    if (!id) return send(reply, 400, {}, Buffer.from('key and bearer token required'));
    const body = request.body;
    const fingerprint = naiveFingerprint('POST', request.url, body);
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const inserted = await client.query({ ...NAIVE_INSERT, values: [id.scope, id.key, fingerprint] });
      if (inserted.rowCount === 0) {
        await client.query('ROLLBACK');
        const [row] = (await client.query({ ...NAIVE_SELECT, values: [id.scope, id.key] })).rows;
        if (!row || row.fingerprint !== fingerprint || row.response_status === null) return send(reply, 409, {}, Buffer.from('conflict'));
        return send(reply, row.response_status, { ...row.response_headers, 'idempotency-replayed': 'true' }, row.response_body);
      }
      const response = Buffer.from(JSON.stringify(payment(this.counter.next('naive'), body)));
      const headers = { 'content-type': JSON_TYPE };
      await client.query({ ...NAIVE_COMPLETE, values: [id.scope, id.key, 201, headers, response] });
      await client.query('COMMIT');
      send(reply, 201, headers, response);
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      send(reply, 500, {}, Buffer.from(String(error)));
    } finally {
      client.release();
    }
  }

  @Post('replay')
  async replay(@Req() request: any, @Res() reply: Reply) {
    const id = keyAndScope(request);
    if (!id) return send(reply, 400, {}, Buffer.from('key and bearer token required'));
    const fingerprint = naiveFingerprint('POST', request.url, request.body);
    const [row] = (await this.pool.query({ ...NAIVE_SELECT, values: [id.scope, id.key] })).rows;
    if (!row) return send(reply, 404, {}, Buffer.from('unknown key'));
    if (row.fingerprint !== fingerprint) return send(reply, 409, {}, Buffer.from('conflict'));
    send(reply, row.response_status, { ...row.response_headers, 'idempotency-replayed': 'true' }, row.response_body);
  }
}

@Module({})
class BenchAppModule {
  static register(databaseUrl: string, withModule: boolean, maxResponseBytes: number, encrypted: boolean, pooled: boolean): DynamicModule {
    return {
      module: BenchAppModule,
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url: databaseUrl, autoLoadEntities: true, synchronize: false, extra: { max: 10 } }),
        ...(withModule
          ? [
              IdempotencyModule.forRoot({
                maxResponseBytes,
                encryption: encrypted ? { keys: [BENCH_RECORD_KEY] } : undefined,
                preparedStatements: !pooled,
              }),
            ]
          : []),
      ],
      // Express tries routes one by one in the order they were registered, each miss costing a
      // path match: the module's POST /payments comes right after the baseline's first route, in
      // the place its replay route has in the app without the module. So against `naive-replay`
      // the module's route is as far down as the baseline's, against `naive` one route further.
      controllers: [
        PaymentsController,
        NaivePaymentsController,
        ...(withModule ? [IdempotentPaymentsController] : []),
        NaiveReplayController,
        RawNaiveController,
      ],
      providers: [
        Counter,
        { provide: NAIVE_POOL, useFactory: () => new Pool({ connectionString: databaseUrl, max: 10 }) },
      ],
    };
  }
}

async function main(): Promise<void> {
  const platform = (process.env.BENCH_PLATFORM ?? 'express') as Platform;
  const withModule = process.env.BENCH_MODULE === '1';
  const databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) throw new Error('DATABASE_URL is not set');
  const maxResponseBytes = Number(process.env.BENCH_MAX_RESPONSE_BYTES ?? 1024 * 1024);
  const encrypted = process.env.BENCH_ENCRYPTION === '1';
  const module = BenchAppModule.register(databaseUrl, withModule, maxResponseBytes, encrypted, process.env.BENCH_POOLED === '1');
  const logger = ['error', 'warn'] as ('error' | 'warn')[];
  const app =
    platform === 'fastify'
      ? await NestFactory.create<NestFastifyApplication>(module, new FastifyAdapter({ bodyLimit: 16 * 1024 * 1024 }), { logger })
      : await NestFactory.create<NestExpressApplication>(module, { logger });
  app.enableShutdownHooks();
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  const counter = app.get(Counter);

  let sampler: NodeJS.Timeout | undefined;
  let peak: NodeJS.MemoryUsage | undefined;
  const sample = () => {
    const now = process.memoryUsage();
    peak ??= now;
    for (const name of Object.keys(now) as (keyof NodeJS.MemoryUsage)[]) peak[name] = Math.max(peak[name], now[name]);
  };
  process.on('message', (message: ServerRequest) => {
    if (message.type === 'gc') (globalThis as { gc?: () => void }).gc?.();
    if (message.type === 'sample-start') {
      peak = undefined;
      sample();
      sampler = setInterval(sample, 1);
    }
    if (message.type === 'sample-stop') {
      clearInterval(sampler);
      sample();
    }
    const stats: ServerStats = { type: 'stats', calls: { ...counter.calls }, memory: process.memoryUsage() };
    if (message.type === 'sample-stop') stats.peak = peak;
    process.send?.(stats);
  });
  // The orchestrator going away (or closing the channel) ends the app.
  process.on('disconnect', () => {
    void app.close().finally(() => process.exit(0));
  });
  process.send?.({ type: 'ready', port });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
