import {
  type ArgumentsHost,
  Body,
  Catch,
  Controller,
  type CanActivate,
  type ExceptionFilter,
  ForbiddenException,
  Get,
  Headers,
  HttpCode,
  HttpException,
  Injectable,
  type INestApplication,
  Module,
  NotFoundException,
  Param,
  type PipeTransform,
  type Type,
  Post,
  Put,
  Redirect,
  Res,
  ServiceUnavailableException,
  StreamableFile,
  UseGuards,
  UsePipes,
  BadRequestException,
  type DynamicModule,
  type MiddlewareConsumer,
  type NestModule,
} from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';
import { HttpAdapterHost } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { DataSource, type MigrationInterface } from 'typeorm';
import { Idempotent, IdempotencyModule, IdempotencyStore, type IdempotencyModuleOptions } from '../../src';
import type { ClaimOpening, RecordedKeyRate } from '../../src/store/recorded-key-rate';
import { runStoreOptions } from './pooler';
import { runTableMigration } from './test-table';

/** Counts handler executions and lets a test hold a handler until it says go. */
@Injectable()
export class Probe {
  readonly calls = new Map<string, number>();
  private readonly gates = new Map<string, { promise: Promise<void>; open: () => void }>();

  hit(name: string): number {
    const count = (this.calls.get(name) ?? 0) + 1;
    this.calls.set(name, count);
    return count;
  }

  count(name: string): number {
    return this.calls.get(name) ?? 0;
  }

  /** A gate that `wait()` blocks on until `open()`; created on first use by either side. */
  gate(name: string) {
    let gate = this.gates.get(name);
    if (!gate) {
      let open!: () => void;
      const promise = new Promise<void>((resolve) => (open = resolve));
      gate = { promise, open };
      this.gates.set(name, gate);
    }
    return gate;
  }

  /**
   * Opens every gate made so far. Specs call it in `afterEach`, so a test that failed while a
   * handler waited on a gate cannot leave that request hanging and `app.close()` with it.
   */
  openAll(): void {
    for (const gate of this.gates.values()) gate.open();
  }
}

@Catch(NotFoundException)
class NotFoundFilter implements ExceptionFilter {
  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(exception: NotFoundException, host: ArgumentsHost) {
    const response = host.switchToHttp().getResponse();
    const { httpAdapter } = this.adapterHost;
    httpAdapter.setHeader(response, 'x-filter', 'not-found');
    httpAdapter.setHeader(response, 'content-type', 'application/problem+json');
    httpAdapter.reply(response, `{"problem":"${exception.message}","at":"filter"}`, 404);
  }
}

@Injectable()
class DenyGuard implements CanActivate {
  canActivate(context: import('@nestjs/common').ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest();
    if (request.headers['x-deny'] === 'yes') throw new ForbiddenException('denied by guard');
    return true;
  }
}

@Injectable()
class NamePipe implements PipeTransform {
  transform(value: any) {
    if (value && typeof value === 'object' && 'name' in value && typeof value.name !== 'string') {
      throw new BadRequestException('name must be a string');
    }
    return value;
  }
}

@Controller('things')
export class ThingsController {
  constructor(private readonly probe: Probe) {}

  @Post() @Idempotent()
  create(@Body() body: unknown) {
    return { created: this.probe.hit('create'), body, random: randomUUID() };
  }

  @Post('required') @Idempotent({ required: true })
  required() {
    return { n: this.probe.hit('required') };
  }

  @Post('validated') @Idempotent() @UsePipes(NamePipe)
  validated(@Body() body: unknown) {
    return { n: this.probe.hit('validated'), body };
  }

  @Post('guarded') @Idempotent() @UseGuards(DenyGuard)
  guarded() {
    return { n: this.probe.hit('guarded') };
  }

  @Post('missing') @Idempotent()
  missing(): never {
    this.probe.hit('missing');
    throw new NotFoundException(`thing ${randomUUID()} not found`);
  }

  @Post('crash') @Idempotent()
  crash(): never {
    this.probe.hit('crash');
    throw new Error('unexpected');
  }

  @Post('flaky') @Idempotent()
  flaky() {
    if (this.probe.hit('flaky') === 1) throw new ServiceUnavailableException('try later');
    return { ok: true };
  }

  @Post('teapot') @Idempotent()
  teapot() {
    this.probe.hit('teapot');
    throw new HttpException({ tea: 'no', id: randomUUID() }, 418);
  }

  @Post('text') @Idempotent() @HttpCode(202)
  text(@Res({ passthrough: true }) response: { header(name: string, value: string): unknown }) {
    // Express and Fastify both offer header(name, value).
    response.header('x-custom', `custom-${this.probe.hit('text')}`);
    response.header('location', '/things/1');
    response.header('set-cookie', 'session=abc');
    response.header('content-type', 'text/plain; charset=utf-8');
    return `plain ${randomUUID()}`;
  }

  @Post('dated') @Idempotent()
  dated(@Res({ passthrough: true }) response: { header(name: string, value: string): unknown }) {
    // A handler that sets its own Date: it describes this delivery, so it is never stored.
    response.header('date', 'Mon, 01 Jan 2001 00:00:00 GMT');
    return { n: this.probe.hit('dated') };
  }

  /** Writes its answer itself (`@Res()` without passthrough): Nest sends nothing after it. */
  @Post('manual') @Idempotent()
  manual(@Res() response: { status(code: number): { send(body: string): unknown } }) {
    // Express and Fastify both offer status(code).send(body).
    response.status(201).send(JSON.stringify({ n: this.probe.hit('manual'), id: randomUUID() }));
  }

  @Post('redirect') @Idempotent() @Redirect('/things/elsewhere', 303)
  redirect() {
    this.probe.hit('redirect');
  }

  @Post('file') @Idempotent()
  file() {
    this.probe.hit('file');
    return new StreamableFile(Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 256)), { type: 'application/octet-stream' });
  }

  /** About 300 kB of multi-byte text: stored, and read back in more than one piece on a replay. */
  @Post('bulky') @Idempotent()
  bulky() {
    return { n: this.probe.hit('bulky'), padding: 'é✓'.repeat(60_000) };
  }

  @Post('large') @Idempotent()
  large() {
    return { n: this.probe.hit('large'), padding: 'x'.repeat(5000) };
  }

  @Post('slow/:gate') @Idempotent()
  async slow(@Param('gate') gate: string) {
    const n = this.probe.hit(`slow:${gate}`);
    await this.probe.gate(gate).promise;
    return { n, gate, random: randomUUID() };
  }

  @Post(':id') @Idempotent()
  createWithId(@Param('id') id: string) {
    return { id, n: this.probe.hit('with-id') };
  }

  @Put(':id') @Idempotent()
  replace(@Param('id') id: string, @Body() body: unknown) {
    return { id, body, n: this.probe.hit('replace') };
  }

  @Get(':id')
  read(@Param('id') id: string, @Headers('x-any') _any: string) {
    return { id, n: this.probe.hit('read') };
  }
}

@Controller('plain')
export class PlainController {
  constructor(private readonly probe: Probe) {}

  @Post()
  create() {
    return { n: this.probe.hit('plain') };
  }
}

@Controller('whole') @Idempotent()
export class WholeController {
  constructor(private readonly probe: Probe) {}

  @Post()
  create() {
    return { n: this.probe.hit('whole'), random: randomUUID() };
  }

  @Get()
  read() {
    return { n: this.probe.hit('whole-get') };
  }
}

/** A running fixture app and what a test needs from it. */
export interface FixtureApp {
  app: INestApplication;
  url: string;
  probe: Probe;
  dataSource: DataSource;
  close(): Promise<void>;
}

/** The HTTP platforms every e2e scenario runs on. */
export type Platform = 'express' | 'fastify';
export const PLATFORMS: Platform[] = ['express', 'fastify'];

/** What differs between fixture apps. */
export interface FixtureSpec {
  controllers: Type<unknown>[];
  options?: IdempotencyModuleOptions;
  platform?: Platform;
  /** Connections in the pool of the app's DataSource. @default 10 */
  poolSize?: number;
  /** The migration that creates the table. @default the run's (see test-table.ts) */
  migration?: new () => MigrationInterface;
  /** Runs before the app listens, e.g. to add a platform hook. */
  configure?: (app: INestApplication) => void;
  /** More modules and providers of the app's root module. */
  imports?: DynamicModule[];
  providers?: Type<unknown>[];
}

/** Boots an app with the module on a real port, against the given database. */
export async function bootFixture(databaseUrl: string, spec: FixtureSpec): Promise<FixtureApp> {
  @Module({
    imports: [
      ...(spec.imports ?? []),
      TypeOrmModule.forRoot({
        type: 'postgres',
        url: databaseUrl,
        autoLoadEntities: true,
        migrations: [spec.migration ?? runTableMigration],
        migrationsRun: true,
        extra: { max: spec.poolSize ?? 10, connectionTimeoutMillis: 2000 },
      }),
      IdempotencyModule.forRoot({ ...runStoreOptions, ...spec.options }),
    ],
    controllers: spec.controllers,
    providers: [Probe, ...(spec.providers ?? [])],
  })
  class FixtureModule implements NestModule {
    configure(consumer: MiddlewareConsumer) {
      // A host middleware that gives every request and response its own id and, when asked to,
      // wraps `end` on the response object itself, as compression middleware does.
      consumer
        .apply((request: any, response: any, next: () => void) => {
          response.setHeader('x-request-id', request.headers['x-request-id'] ?? `req_${randomUUID()}`);
          if (request.headers['x-wrap-end']) {
            const end = response.end;
            response.end = function (this: any, ...args: unknown[]) {
              this.setHeader('x-wrapped', 'yes');
              return end.apply(this, args);
            };
          }
          next();
        })
        .forRoutes('*path');
    }
  }

  const moduleRef = await Test.createTestingModule({ imports: [FixtureModule] }).compile();
  const logger = process.env.TEST_LOGS ? undefined : (false as const);
  let app: INestApplication;
  if (spec.platform === 'fastify') {
    app = moduleRef.createNestApplication<NestFastifyApplication>(new FastifyAdapter(), { logger });
  } else {
    const express = moduleRef.createNestApplication<NestExpressApplication>({ logger });
    express.useBodyParser('text');
    app = express;
  }
  app.useGlobalFilters(new NotFoundFilter(app.get(HttpAdapterHost)));
  spec.configure?.(app);
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  return {
    app,
    url: `http://127.0.0.1:${port}`,
    probe: app.get(Probe),
    dataSource: app.get(DataSource),
    close: () => app.close(),
  };
}

/** The statement the app's store opens its next claim with (see RecordedKeyRate). */
export function claimOpening(fixture: FixtureApp): ClaimOpening {
  return (fixture.app.get(IdempotencyStore) as unknown as { recordedKeys: RecordedKeyRate }).recordedKeys.opening;
}

/** Boots the general fixture app (things, plain, whole) with module options. */
export function startFixtureApp(databaseUrl: string, options: IdempotencyModuleOptions = {}, platform: Platform = 'express'): Promise<FixtureApp> {
  return bootFixture(databaseUrl, { controllers: [ThingsController, PlainController, WholeController], options, platform });
}
