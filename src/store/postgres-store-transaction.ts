import type { PoolClient } from 'pg';
import type { DataSource, EntityManager, QueryRunner } from 'typeorm';
import type { ClaimOutcome, ClaimRequest, IsolationLevel, RecordOwner, StoreTransaction, StoredResponse } from './idempotency.store';
import type { PostgresIdempotencyStore } from './postgres-idempotency.store';
import { sqlRunner, type SqlRunner } from './sql-runner';

/**
 * Takes the transaction-scoped advisory lock of a scope + key, or answers false at once when another
 * transaction holds it. Every transactional claim of a key takes it first, so a duplicate never waits
 * on the row lock of an uncommitted twin while holding a pool connection (and a burst of duplicates
 * cannot starve the request they wait for). Length-prefixing keeps ("a b", "c") apart from ("a", "b c").
 */
export const tryKeyLock = (scope: string, key: string) =>
  `pg_try_advisory_xact_lock(hashtextextended(length(${scope})::text || ':' || ${scope} || ${key}, 7305219447))`;

/** The transactional claim's first statement: the key's advisory lock, or false at once. */
export const TRY_KEY_LOCK = { name: 'idempotency_try_key_lock_v1', text: `SELECT ${tryKeyLock('$1', '$2')} AS locked` };

const SAVEPOINT = 'idempotency_handler';

/** A transactional route's transaction on one connection borrowed from the host DataSource. */
export class PostgresStoreTransaction implements StoreTransaction {
  private readonly run: SqlRunner;

  private constructor(
    private readonly queryRunner: QueryRunner,
    private readonly client: PoolClient,
    private readonly store: PostgresIdempotencyStore,
  ) {
    this.run = sqlRunner(client);
  }

  /** Borrows a connection and starts the transaction through TypeORM, so the handler's own nested transactions become savepoints. */
  static async begin(dataSource: DataSource, isolation: IsolationLevel, store: PostgresIdempotencyStore): Promise<PostgresStoreTransaction> {
    const queryRunner = dataSource.createQueryRunner('master');
    try {
      const client = (await queryRunner.connect()) as PoolClient;
      await queryRunner.startTransaction(isolation);
      return new PostgresStoreTransaction(queryRunner, client, store);
    } catch (error) {
      await queryRunner.release();
      throw error;
    }
  }

  get manager(): EntityManager {
    return this.queryRunner.manager;
  }

  async claim(request: ClaimRequest): Promise<ClaimOutcome> {
    const { rows } = await this.run(TRY_KEY_LOCK, [request.scope, request.key]);
    if (!rows[0].locked) return { kind: 'in_flight', fingerprint: null };
    return this.store.claim(request, this.run);
  }

  async savepoint(): Promise<void> {
    await this.client.query(`SAVEPOINT ${SAVEPOINT}`);
  }

  async rollbackToSavepoint(): Promise<void> {
    await this.client.query(`ROLLBACK TO SAVEPOINT ${SAVEPOINT}`);
  }

  async complete(owner: RecordOwner, response: StoredResponse): Promise<void> {
    if (!(await this.store.complete(owner, response, this.run))) {
      throw new Error('the claim made in this transaction is gone');
    }
  }

  async commit(): Promise<void> {
    try {
      // In a transaction that already failed, COMMIT quietly rolls back instead of raising; a
      // statement first makes such a failure visible.
      await this.client.query('SELECT 1');
      await this.queryRunner.commitTransaction();
    } catch (error) {
      await this.rollback();
      throw error;
    }
    await this.queryRunner.release();
  }

  async abandon(): Promise<void> {
    // Closing the connection makes PostgreSQL roll the transaction back. A ROLLBACK would run only
    // after what the handler has queued on the connection, and what it queues next would then run
    // outside any transaction. TypeORM's postgres query runner hands a release error on to the pool,
    // which then closes the connection instead of reusing it (the method is private in its types).
    const runner = this.queryRunner as unknown as { releasePostgresConnection(error: Error): Promise<void> };
    try {
      await runner.releasePostgresConnection(new Error('transaction abandoned'));
    } catch {
      // Already gone: PostgreSQL rolls back a transaction whose connection is lost.
    }
  }

  async rollback(): Promise<void> {
    try {
      if (this.queryRunner.isTransactionActive) await this.queryRunner.rollbackTransaction();
    } catch {
      // The connection is broken; releasing it below is all that is left to do.
    } finally {
      await this.queryRunner.release();
    }
  }
}
