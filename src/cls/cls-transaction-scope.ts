import { Inject, Injectable, type OnModuleInit } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import { TransactionHost, getTransactionHostToken } from '@nestjs-cls/transactional';
import { ClsServiceManager } from 'nestjs-cls';
import type { EntityManager } from 'typeorm';
import { IdempotencyConfigurationError } from '../idempotency.exceptions';
import type { TransactionScope } from '../transaction/transaction-scope';

/** Options of `IdempotencyClsModule.forRoot()`. */
export interface IdempotencyClsOptions {
  /** The `connectionName` of the `ClsPluginTransactional` to join. @default its unnamed one */
  connectionName?: string;
}

/** What is used of a TransactionHost, its private setTxInstance() included. */
type SettableHost = { setTxInstance?(tx: unknown): void };

/** Injection token of the IdempotencyClsOptions. */
export const IDEMPOTENCY_CLS_OPTIONS = Symbol('idempotency:cls-options');

/**
 * Runs a transactional route's handler in a CLS context of its own in which
 * `@nestjs-cls/transactional` holds the request's transaction as its current one: `TransactionHost.tx`
 * and `@InjectTransaction()` are the request's `EntityManager`, and `@Transactional()` methods
 * (propagation `Required`, the default) join it.
 *
 * The transaction is set with `TransactionHost`'s `setTxInstance()`, the method the library calls
 * itself when it opens a transaction: it knows the CLS key of each connection name and also updates
 * the `@InjectTransaction()` proxy. It is private in the library's types, so its presence is checked
 * at bootstrap.
 */
@Injectable()
export class ClsTransactionScope implements TransactionScope, OnModuleInit {
  private host!: SettableHost;

  constructor(
    private readonly moduleRef: ModuleRef,
    @Inject(IDEMPOTENCY_CLS_OPTIONS) private readonly options: IdempotencyClsOptions,
  ) {}

  onModuleInit(): void {
    const { connectionName } = this.options;
    const token = getTransactionHostToken(connectionName);
    try {
      this.host = this.moduleRef.get<TransactionHost, SettableHost>(token, { strict: false });
    } catch {
      const named = connectionName ? `connectionName: '${connectionName}', ` : '';
      throw new IdempotencyConfigurationError(
        'IdempotencyClsModule found no TransactionHost of @nestjs-cls/transactional. Add ' +
          `ClsModule.forRoot({ plugins: [new ClsPluginTransactional({ ${named}adapter })] }) ` +
          'to the imports of the root module.',
      );
    }
    if (typeof this.host.setTxInstance !== 'function') {
      throw new IdempotencyConfigurationError(
        'IdempotencyClsModule cannot set the transaction of this version of @nestjs-cls/transactional ' +
          '(its TransactionHost has no setTxInstance()); use @nestjs-cls/transactional 3.',
      );
    }
  }

  run<T>(manager: EntityManager, work: () => T): T {
    return ClsServiceManager.getClsService().run({ ifNested: 'inherit' }, () => {
      this.host.setTxInstance!(manager);
      return work();
    });
  }
}
