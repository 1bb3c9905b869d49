import { Controller, Inject, Injectable, type INestApplication, Module, type ModuleMetadata, Post } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { TypeOrmModule, type TypeOrmModuleOptions } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { DataSource } from 'typeorm';
import {
  CreateIdempotencyKeys1764288000000,
  IdempotencyConfigurationError,
  IdempotencyKeyEntity,
  Idempotent,
  IdempotencyModule,
  IdempotencyService,
  type IdempotencyModuleOptions,
} from '../src';
import { authed, send } from './support/http-client';
import { createTestDatabase, type TestDatabase } from './support/test-database';

@Controller('orders')
class OrdersController {
  @Post() @Idempotent()
  create() {
    return { id: randomUUID() };
  }
}

let refundRuns = 0;

/** Marked twice: on the controller and, with options of its own, on the handler. */
@Controller('refunds') @Idempotent()
class RefundsController {
  @Post() @Idempotent({ required: true })
  create() {
    refundRuns++;
    return { id: randomUUID() };
  }
}

/** A feature module of the host: its controller sees none of IdempotencyModule's providers. */
@Module({ controllers: [RefundsController] })
class RefundsModule {}

const OPTIONS_SOURCE = 'OPTIONS_SOURCE';

/** Stands in for a ConfigService: options come from another module's provider. */
@Module({ providers: [{ provide: OPTIONS_SOURCE, useValue: { conflictStatus: 422 } }], exports: [OPTIONS_SOURCE] })
class ConfigLikeModule {}

@Injectable()
class OptionsFactory {
  createIdempotencyOptions(): IdempotencyModuleOptions {
    return { conflictStatus: 422 };
  }
}

/** Something of the host that uses IdempotencyService without importing the module. */
@Injectable()
class Janitor {
  constructor(@Inject(IdempotencyService) readonly idempotency: IdempotencyService) {}
}
@Module({ providers: [Janitor], exports: [Janitor] })
class JanitorModule {}

// forRoot()/forRootAsync() variants, isGlobal, a named DataSource and bootstrap validation.
describe('Module setup', () => {
  let database: TestDatabase;
  const apps: INestApplication[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    for (const app of apps) await app.close();
    await database?.drop();
  });

  const typeorm = (extra: Partial<TypeOrmModuleOptions> = {}) =>
    TypeOrmModule.forRoot({
      type: 'postgres',
      url: database.url,
      autoLoadEntities: true,
      migrations: [CreateIdempotencyKeys1764288000000],
      migrationsRun: true,
      ...extra,
    } as TypeOrmModuleOptions);

  async function boot(imports: ModuleMetadata['imports']): Promise<{ app: INestApplication; url: string }> {
    const moduleRef = await Test.createTestingModule({ imports, controllers: [OrdersController] }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    apps.push(app);
    await app.listen(0, '127.0.0.1');
    return { app, url: `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}` };
  }

  /** Sends a key twice with different bodies; the second answer's status shows which options apply. */
  async function conflictStatus(url: string): Promise<number> {
    const token = randomUUID();
    const key = randomUUID();
    const first = await send(url, { path: '/orders', headers: authed(token, key), body: { n: 1 } });
    expect(first.status).toBe(201);
    expect((await send(url, { path: '/orders', headers: authed(token, key), body: { n: 1 } })).headers['idempotency-replayed']).toBe('true');
    return (await send(url, { path: '/orders', headers: authed(token, key), body: { n: 2 } })).status;
  }

  it('works with forRoot() and no arguments', async () => {
    const { url } = await boot([typeorm(), IdempotencyModule.forRoot()]);
    expect(await conflictStatus(url)).toBe(409);
  });

  it('serves a route of a feature module marked on both its controller and its handler, once per key', async () => {
    const { url } = await boot([typeorm(), IdempotencyModule.forRoot(), RefundsModule]);
    const headers = authed(randomUUID(), randomUUID());
    const first = await send(url, { path: '/refunds', headers, body: { n: 1 } });
    expect(first.status).toBe(201);
    const retry = await send(url, { path: '/refunds', headers, body: { n: 1 } });
    expect(retry.headers['idempotency-replayed']).toBe('true');
    expect(retry.body).toEqual(first.body);
    expect(refundRuns).toBe(1);
    // The handler's own options win over its controller's.
    expect((await send(url, { path: '/refunds', headers: authed(randomUUID()), body: { n: 1 } })).status).toBe(400);
  });

  it('takes options from a factory with injected dependencies (forRootAsync useFactory)', async () => {
    const { url } = await boot([
      typeorm(),
      IdempotencyModule.forRootAsync({
        imports: [ConfigLikeModule],
        inject: [OPTIONS_SOURCE],
        useFactory: (source: IdempotencyModuleOptions) => source,
      }),
    ]);
    expect(await conflictStatus(url)).toBe(422);
  });

  it('takes options from a class (forRootAsync useClass)', async () => {
    const { url } = await boot([typeorm(), IdempotencyModule.forRootAsync({ useClass: OptionsFactory })]);
    expect(await conflictStatus(url)).toBe(422);
  });

  it('takes options from an existing provider (forRootAsync useExisting)', async () => {
    @Module({ providers: [OptionsFactory], exports: [OptionsFactory] })
    class FactoryModule {}
    const { url } = await boot([typeorm(), IdempotencyModule.forRootAsync({ imports: [FactoryModule], useExisting: OptionsFactory })]);
    expect(await conflictStatus(url)).toBe(422);
  });

  it('makes IdempotencyService injectable everywhere with isGlobal', async () => {
    const { app } = await boot([typeorm(), IdempotencyModule.forRoot({ isGlobal: true }), JanitorModule]);
    expect(await app.get(Janitor).idempotency.purgeExpired()).toBeGreaterThanOrEqual(0);
  });

  it('uses a named DataSource', async () => {
    const { app, url } = await boot([typeorm({ name: 'billing' }), IdempotencyModule.forRoot({ dataSource: 'billing' })]);
    expect(await conflictStatus(url)).toBe(409);
    expect(app.get(IdempotencyService)).toBeDefined();
  });

  it('registers its entity with TypeORM, so a host with autoLoadEntities and no entity list knows it', async () => {
    const { app } = await boot([typeorm(), IdempotencyModule.forRoot()]);
    // typeorm() lists no entities: only the module's TypeOrmModule.forFeature() registration can add it.
    const dataSource = app.get(DataSource);
    expect(dataSource.hasMetadata(IdempotencyKeyEntity)).toBe(true);
    expect(dataSource.getMetadata(IdempotencyKeyEntity).tableName).toBe('idempotency_keys');
  });

  it('renders errors with formatError and docsUrl when given', async () => {
    const { url } = await boot([
      typeorm(),
      IdempotencyModule.forRoot({
        formatError: (error) => ({ problem: error.code, status: error.status, docs: error.docsUrl }),
        docsUrl: (code) => `https://example.test/${code}`,
      }),
    ]);
    const answer = await send(url, { path: '/orders', headers: authed(randomUUID(), '') });
    expect(answer.status).toBe(400);
    expect(answer.json).toEqual({ problem: 'invalid_idempotency_key', status: 400, docs: 'https://example.test/invalid_idempotency_key' });
  });

  it('scopes records with a custom resolver, and runs unscoped requests without idempotency when told to bypass', async () => {
    const { url } = await boot([
      typeorm(),
      IdempotencyModule.forRoot({ scope: (request) => request.headers['x-tenant'], onUnresolvedScope: 'bypass' }),
    ]);
    const key = randomUUID();
    const asTenant = (tenant?: string) =>
      send(url, { path: '/orders', headers: tenant ? [['X-Tenant', tenant], ['Idempotency-Key', key]] : [['Idempotency-Key', key]] });
    const first = await asTenant('acme');
    expect((await asTenant('acme')).body.equals(first.body)).toBe(true);
    expect((await asTenant('globex')).body.equals(first.body)).toBe(false);
    const unscoped = [await asTenant(), await asTenant()];
    expect(unscoped.map((answer) => answer.status)).toEqual([201, 201]);
    expect(unscoped[1].headers['idempotency-replayed']).toBeUndefined();
    expect(unscoped[0].body.equals(unscoped[1].body)).toBe(false);
  });

  it('starts with a TTL shorter than the default lease, and serves', async () => {
    const { url } = await boot([typeorm(), IdempotencyModule.forRoot({ ttl: 3000 })]);
    expect(await conflictStatus(url)).toBe(409);
  });

  it.each([
    ['a TTL of 0', { ttl: 0 }, /"ttl" must be a positive integer/],
    ['a lease as long as the TTL', { ttl: 1000, lease: 1000 }, /"lease" \(1000 ms\) must be shorter than "ttl"/],
    ['a negative purge interval', { purgeInterval: -1 }, /"purgeInterval" must be 0/],
    ['a purge interval longer than a timer can wait', { purgeInterval: 2 ** 31 }, /"purgeInterval" must be at most/],
    ['an unknown isolation level', { isolation: 'CHAOS' as never }, /"isolation" must be one of/],
    ['a store timeout of 0', { storeTimeout: 0 }, /"storeTimeout" must be a positive integer/],
  ])('refuses %s at bootstrap, saying how to fix it', async (_name, options, message) => {
    // The DataSource is not connected: a failed bootstrap must leave no pool behind.
    const attempt = boot([typeorm({ manualInitialization: true }), IdempotencyModule.forRoot(options)]);
    await expect(attempt).rejects.toThrow(IdempotencyConfigurationError);
    await expect(attempt).rejects.toThrow(message);
  });

  it('says how to fix a missing TypeORM connection', async () => {
    await expect(boot([IdempotencyModule.forRoot()])).rejects.toThrow(/cannot find the default TypeORM DataSource\. Import TypeOrmModule\.forRoot/);
    await expect(boot([typeorm({ manualInitialization: true }), IdempotencyModule.forRoot({ dataSource: 'nope' })])).rejects.toThrow(/named "nope"/);
  });

  it('says how to fix a route marked @Idempotent() in an application without the module', async () => {
    const attempt = boot([typeorm({ manualInitialization: true })]);
    await expect(attempt).rejects.toThrow(IdempotencyConfigurationError);
    await expect(attempt).rejects.toThrow(/Add IdempotencyModule\.forRoot\(\) to the imports/);
  });
});
