import { type DynamicModule, Module } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { TypeOrmModule, getDataSourceToken } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';
import { RecordResealer } from './encryption/record-resealer';
import { IdempotencyConfigurationError } from './idempotency.exceptions';
import { IdempotencyInterceptor } from './idempotency.interceptor';
import {
  ConfigurableIdempotencyModule,
  IDEMPOTENCY_ASYNC_OPTIONS_TYPE,
  IDEMPOTENCY_MODULE_OPTIONS,
  IDEMPOTENCY_OPTIONS_TYPE,
} from './idempotency.module-definition';
import type { IdempotencyModuleOptions, ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS, resolveOptions } from './idempotency-options';
import { IdempotencyPurgeTask } from './idempotency-purge.task';
import { IdempotencyService } from './idempotency.service';
import { IdempotencyErrors } from './idempotency-errors';
import { LeasedRun } from './leased-run';
import { TransactionalRoutesValidator } from './transaction/transactional-routes.validator';
import { TransactionalRun } from './transaction/transactional-run';
import { IdempotencyKeyEntity } from './store/idempotency-key.entity';
import { IdempotencyStore } from './store/idempotency.store';
import { PostgresIdempotencyStore } from './store/postgres-idempotency.store';

/**
 * Stripe-grade `Idempotency-Key` handling on PostgreSQL. Import it next to `TypeOrmModule` and
 * mark routes with `@Idempotent()`; it uses the host's DataSource and opens no connection of its own.
 */
@Module({})
export class IdempotencyModule extends ConfigurableIdempotencyModule {
  /** Registers the module; every option is optional. */
  static override forRoot(options: typeof IDEMPOTENCY_OPTIONS_TYPE = {}): DynamicModule {
    return withProviders(super.forRoot(options), options.dataSource);
  }

  /** Registers the module with options from a factory, class or existing provider. */
  static override forRootAsync(options: typeof IDEMPOTENCY_ASYNC_OPTIONS_TYPE): DynamicModule {
    return withProviders(super.forRootAsync(options), options.dataSource);
  }
}

function withProviders(definition: DynamicModule, dataSourceName: string | undefined): DynamicModule {
  // Called for its registration only, so `autoLoadEntities` picks up the entity. Its module is not
  // imported: it would demand the DataSource with Nest's generic error where ours says how to fix it.
  TypeOrmModule.forFeature([IdempotencyKeyEntity], dataSourceName);
  return {
    ...definition,
    imports: [...(definition.imports ?? []), DiscoveryModule],
    providers: [
      ...(definition.providers ?? []),
      {
        provide: RESOLVED_IDEMPOTENCY_OPTIONS,
        useFactory: (options: IdempotencyModuleOptions) => resolveOptions(options),
        inject: [IDEMPOTENCY_MODULE_OPTIONS],
      },
      {
        provide: IdempotencyStore,
        useFactory: (dataSource: DataSource | undefined, options: ResolvedIdempotencyOptions) =>
          new PostgresIdempotencyStore(checkDataSource(dataSource, dataSourceName), options),
        inject: [{ token: getDataSourceToken(dataSourceName), optional: true }, RESOLVED_IDEMPOTENCY_OPTIONS],
      },
      {
        provide: RecordResealer,
        useFactory: (dataSource: DataSource | undefined, options: ResolvedIdempotencyOptions) =>
          new RecordResealer(checkDataSource(dataSource, dataSourceName), options.encryption),
        inject: [{ token: getDataSourceToken(dataSourceName), optional: true }, RESOLVED_IDEMPOTENCY_OPTIONS],
      },
      IdempotencyService,
      IdempotencyPurgeTask,
      IdempotencyErrors,
      LeasedRun,
      TransactionalRun,
      TransactionalRoutesValidator,
      IdempotencyInterceptor,
    ],
    exports: [...(definition.exports ?? []), IdempotencyService, IdempotencyStore],
  };
}

function checkDataSource(dataSource: DataSource | undefined, name: string | undefined): DataSource {
  const which = name ? `the TypeORM DataSource named "${name}"` : 'the default TypeORM DataSource';
  if (!dataSource) {
    throw new IdempotencyConfigurationError(
      `IdempotencyModule cannot find ${which}. Import TypeOrmModule.forRoot({ type: 'postgres', ...${name ? `, name: '${name}'` : ''} }) in the application, or set the "dataSource" option to the name of an existing DataSource.`,
    );
  }
  if (dataSource.options.type !== 'postgres') {
    throw new IdempotencyConfigurationError(
      `IdempotencyModule needs PostgreSQL, but ${which} is of type "${dataSource.options.type}". Point the "dataSource" option at a postgres DataSource.`,
    );
  }
  return dataSource;
}
