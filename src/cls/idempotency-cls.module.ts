import { type DynamicModule, Global, Module } from '@nestjs/common';
import { TRANSACTION_SCOPE } from '../transaction/transaction-scope';
import { ClsTransactionScope, IDEMPOTENCY_CLS_OPTIONS, type IdempotencyClsOptions } from './cls-transaction-scope';

/**
 * Lets `@nestjs-cls/transactional` (with `@nestjs-cls/transactional-adapter-typeorm`) join the
 * transaction of `@Idempotent({ transactional: true })` routes: in the handler and every service it
 * calls, `TransactionHost.tx` is the request's transaction. Import it next to `IdempotencyModule`
 * and `ClsModule` (with `ClsPluginTransactional`), from `nest-idempotency-pg/cls`, the only entry
 * point that needs those optional packages.
 */
@Global()
@Module({})
export class IdempotencyClsModule {
  /** Registers the bridge, for the plugin's unnamed connection or `connectionName`. */
  static forRoot(options: IdempotencyClsOptions = {}): DynamicModule {
    return {
      module: IdempotencyClsModule,
      providers: [
        { provide: IDEMPOTENCY_CLS_OPTIONS, useValue: options },
        { provide: TRANSACTION_SCOPE, useClass: ClsTransactionScope },
      ],
      exports: [TRANSACTION_SCOPE],
    };
  }
}
