import type { PoolClient } from 'pg';
import type { DataSource, EntityManager, QueryRunner } from 'typeorm';
import type { ClaimOutcome, ClaimRequest, IsolationLevel, RecordOwner, StoreTransaction, StoredResponse } from './idempotency.store';
import type { PostgresIdempotencyStore } from './postgres-idempotency.store';
import { isConnectionFailure } from './postgres-errors';
import { keepErrorsFromCrashing, type SqlRunner, type StatementSender } from './sql-runner';
import { StoreTimeoutError, withinTimeout } from './store-timeout';

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

/**
 * A transactional route's transaction on one connection borrowed from the host DataSource. Every
 * step waits for the database at most `timeout` ms; past that, or once the connection broke, the
 * transaction is abandoned (its connection closed, never handed back to the pool).
 */
export class PostgresStoreTransaction implements StoreTransaction {
  private readonly run: SqlRunner;
  /** A step timed out or lost the connection: closing the connection is all that is left. */
  private broken = false;

  private constructor(
    private readonly queryRunner: QueryRunner,
    private readonly client: PoolClient,
    private readonly store: PostgresIdempotencyStore,
    statements: StatementSender,
    private readonly timeout: number,
  ) {
    const send = statements.onClient(client);
    this.run = (statement, values) => this.bounded(send(statement, values));
  }

  /** Borrows a connection and starts the transaction through TypeORM, so the handler's own nested transactions become savepoints. */
  static async begin(
    dataSource: DataSource,
    isolation: IsolationLevel,
    store: PostgresIdempotencyStore,
    statements: StatementSender,
    timeout: number,
  ): Promise<PostgresStoreTransaction> {
    const started = Date.now();
    const queryRunner = dataSource.createQueryRunner('master');
    const connecting = queryRunner.connect() as Promise<PoolClient>;
    // A connection that comes after the wait is over goes back unused.
    const client = await withinTimeout(connecting, timeout, () => connecting.then(() => queryRunner.release())).catch(
      async (error: unknown) => {
        if (!(error instanceof StoreTimeoutError)) await queryRunner.release();
        throw error;
      },
    );
    keepErrorsFromCrashing(client);
    const transaction = new PostgresStoreTransaction(queryRunner, client, store, statements, timeout);
    try {
      // Connecting and starting share one timeout.
      await transaction.bounded(queryRunner.startTransaction(isolation), Math.max(1, timeout - (Date.now() - started)));
    } catch (error) {
      await transaction.rollback();
      throw error;
    }
    return transaction;
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
    await this.bounded(this.client.query(`SAVEPOINT ${SAVEPOINT}`));
  }

  async rollbackToSavepoint(): Promise<void> {
    await this.bounded(this.client.query(`ROLLBACK TO SAVEPOINT ${SAVEPOINT}`));
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
      await this.bounded(this.client.query('SELECT 1'));
      // A COMMIT that timed out may still have committed: the caller answers 503, and the retry
      // then finds the stored response, or nothing.
      await this.bounded(this.queryRunner.commitTransaction());
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
    if (this.broken) return this.abandon();
    try {
      if (this.queryRunner.isTransactionActive) await this.bounded(this.queryRunner.rollbackTransaction());
    } catch {
      // The connection is broken (and, if it timed out, already closed); releasing it below is all
      // that is left to do.
    } finally {
      await this.queryRunner.release();
    }
  }

  /** `work` on this connection within the timeout; a step that times out or loses the connection breaks it. */
  private async bounded<T>(work: Promise<T>, timeout = this.timeout): Promise<T> {
    try {
      return await withinTimeout(work, timeout, () => this.abandon());
    } catch (error) {
      if (isConnectionFailure(error)) this.broken = true;
      throw error;
    }
  }
}
