import { Logger } from '@nestjs/common';
import type { Pool, PoolClient, QueryConfig, QueryResult, QueryResultRow } from 'pg';
import { isLostPreparedStatement } from './postgres-errors';
import { StoreTimeoutError, withinTimeout } from './store-timeout';

/** Runs one of the store's statements on the pool or on one connection. */
export type SqlRunner = (statement: PreparedStatement, values: unknown[]) => Promise<SqlResult>;

/** What a statement answered. */
export interface SqlResult {
  rows: QueryResultRow[];
  rowCount: number;
}

/** A statement with a stable name, so `pg` prepares it once per connection while statements are named. */
export interface PreparedStatement {
  name: string;
  text: string;
}

/** How the store sends its statements. */
export interface StatementOptions {
  /** Send named statements, prepared once per connection; false sends every statement unnamed. */
  preparedStatements: boolean;
  /** Longest wait for a pool connection, and then for the answer, in ms. */
  timeout: number;
}

/**
 * Sends the store's statements, named (prepared once per connection) or unnamed. Behind a
 * transaction pooler (PgBouncer `pool_mode = transaction`) each transaction may run on another
 * server connection, so a statement prepared on one is missing (26000) or already there (42P05) on
 * the next: from the first such error on, every statement goes unnamed.
 */
export class StatementSender {
  private readonly logger = new Logger('Idempotency');
  private named: boolean;

  constructor(private readonly options: StatementOptions) {
    this.named = options.preparedStatements;
  }

  /** Whether statements still go out named. */
  get prepared(): boolean {
    return this.named;
  }

  /**
   * A runner that takes a pool connection for each statement. A statement the pooler lost is sent
   * again unnamed: it failed before it ran, and outside a transaction nothing else is undone.
   */
  onPool(pool: () => Pool): SqlRunner {
    return async (statement, values) => {
      const named = this.named;
      try {
        return await this.sendOnPool(pool(), this.query(statement, values, named));
      } catch (error) {
        if (!named || !this.lost(error)) throw error;
        return this.sendOnPool(pool(), this.query(statement, values, false));
      }
    };
  }

  /** A runner on one connection inside a transaction; a statement the pooler lost fails it. */
  onClient(client: PoolClient): SqlRunner {
    return async (statement, values) => {
      const named = this.named;
      try {
        return answered(await client.query(this.query(statement, values, named)));
      } catch (error) {
        if (named) this.lost(error);
        throw error;
      }
    };
  }

  private sendOnPool(pool: Pool, query: QueryConfig): Promise<SqlResult> {
    const { timeout } = this.options;
    const started = Date.now();
    return withPoolClient(pool, timeout, async (client) => {
      // pg reads query_timeout from the query config; its types do not declare it.
      const bounded = { ...query, query_timeout: Math.max(1, timeout - (Date.now() - started)) } as QueryConfig;
      try {
        return answered(await client.query(bounded));
      } catch (error) {
        throw isQueryTimeout(error) ? new StoreTimeoutError(timeout) : error;
      }
    });
  }

  private query(statement: PreparedStatement, values: unknown[], named: boolean): QueryConfig {
    return named ? { name: statement.name, text: statement.text, values } : { text: statement.text, values };
  }

  /** Whether `error` says a named statement was lost; if so, statements go unnamed from now on. */
  private lost(error: unknown): boolean {
    if (!isLostPreparedStatement(error)) return false;
    if (this.named) {
      this.named = false;
      this.logger.warn(
        `A prepared statement of the idempotency store was missing on its connection (${(error as Error).message}): ` +
          'the database is reached through a transaction pooler such as PgBouncer in transaction mode. ' +
          'The store now sends unnamed statements; set the IdempotencyModule option preparedStatements: false.',
      );
    }
    return true;
  }
}

/**
 * Lends `work` a connection of the pool, taken within `timeout` ms. A connection whose work failed
 * is closed rather than reused, as by pg's own Pool.query: it may be broken, or still be running a
 * query that timed out.
 */
export async function withPoolClient<T>(
  pool: Pool,
  timeout: number,
  work: (client: PoolClient) => Promise<T>,
): Promise<T> {
  const connecting = pool.connect();
  // A connection that comes after the wait is over goes back unused.
  const client = await withinTimeout(connecting, timeout, () => connecting.then((late) => late.release()));
  // pg raises a connection error that no query waits for as an 'error' event, which crashes the
  // process when nobody listens; the failed work's release then closes that connection.
  const ignore = () => undefined;
  client.on('error', ignore);
  try {
    const result = await work(client);
    client.removeListener('error', ignore);
    client.release();
    return result;
  } catch (error) {
    client.removeListener('error', ignore);
    client.release(error instanceof Error ? error : new Error(String(error)));
    throw error;
  }
}

function answered({ rows, rowCount }: QueryResult): SqlResult {
  return { rows, rowCount: rowCount ?? 0 };
}

function isQueryTimeout(error: unknown): boolean {
  return error instanceof Error && error.message === 'Query read timeout';
}
