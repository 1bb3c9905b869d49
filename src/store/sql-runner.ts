import { Logger } from '@nestjs/common';
import type { Pool, PoolClient, QueryConfig, QueryResult, QueryResultRow } from 'pg';
import { isLostPreparedStatement } from './postgres-errors';
import { StoreTimeoutError } from './store-timeout';

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
  /** Longest wait for a pool connection and the answer together, in ms. */
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

  private async sendOnPool(pool: Pool, query: QueryConfig): Promise<SqlResult> {
    return answered(await queryOnPool(pool, query, this.options.timeout));
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
 * Runs one query on a connection of the pool, all within `timeout` ms: one timer covers waiting for
 * the connection and for the answer. A connection whose query failed or timed out is closed rather
 * than reused, as by pg's own Pool.query: it may be broken, or still be running the query.
 */
function queryOnPool(pool: Pool, query: QueryConfig, timeout: number): Promise<QueryResult> {
  return new Promise((resolve, reject) => {
    let client: PoolClient | undefined;
    let settled = false;
    const settle = (error: Error | undefined, result?: QueryResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client?.release(error);
      if (error) reject(error);
      else resolve(result as QueryResult);
    };
    const timer = setTimeout(() => settle(new StoreTimeoutError(timeout)), timeout);
    // Callbacks, not promises: this runs for every statement of every request.
    pool.connect((connectError, acquired) => {
      if (connectError) return settle(connectError);
      const connected = acquired as PoolClient;
      // A connection that comes after the wait is over goes back unused.
      if (settled) return connected.release();
      client = connected;
      keepErrorsFromCrashing(client);
      client.query(query, (queryError: Error | null, result: QueryResult) => settle(queryError ?? undefined, result));
    });
  });
}

const guarded = new WeakSet<PoolClient>();

/**
 * Keeps a connection's errors from crashing the process. pg raises an error no query waits for (a
 * server that ends the session right after an answer) as an 'error' event, which crashes the
 * process when nobody listens; and pg-pool may hand a connection the store gives back to another
 * waiting user within the very read that brings that error, before that user listens. The error
 * still leaves the connection unusable, and it is closed when it is next given back.
 */
export function keepErrorsFromCrashing(client: PoolClient): void {
  if (guarded.has(client)) return;
  guarded.add(client);
  client.on('error', () => undefined);
}

function answered({ rows, rowCount }: QueryResult): SqlResult {
  return { rows, rowCount: rowCount ?? 0 };
}
