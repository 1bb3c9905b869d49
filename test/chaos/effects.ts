// What the chaos app and whoever drives it share: the business table and the request body.
import { QueryRunnerProviderAlreadyReleasedError } from 'typeorm';

/**
 * The business table of the chaos app: one row per handler execution, with the x-request-id of the
 * attempt that ran it, and `done_at` set when it ends.
 */
export const EFFECTS_SCHEMA = `
  CREATE TABLE IF NOT EXISTS effects (
    id bigserial PRIMARY KEY,
    mode text NOT NULL,
    scope text NOT NULL,
    idem_key text,
    execution uuid NOT NULL,
    epoch text NOT NULL,
    instance text NOT NULL,
    request_id text,
    done_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
  )`;

/**
 * Milliseconds the handler waits between writing its effect and marking it done. A header, not part
 * of the body: how long one execution takes is no part of the request's identity (its fingerprint).
 */
export const DELAY_HEADER = 'x-chaos-delay-ms';

/** Body of POST /<route>/tx and /<route>/leased. */
export interface EffectRequest {
  /** Which logical item this is; echoed. */
  item: number;
  /** Answer 422 (stored like any 4xx) after writing the effect. */
  reject?: boolean;
}

/** What the handlers answer (201), or carry inside their 422. */
export interface EffectAnswer {
  mode: 'tx' | 'leased';
  scope: string | null;
  key: string | null;
  item: number | null;
  execution: string;
  instance: string;
  epoch: string;
  rejected?: true;
}

/**
 * Errors that mean "the database is not reachable right now" (connection refused or cut, server
 * shutting down or starting up). The chaos app answers them 503, as a real API would; anything
 * else stays a 500.
 */
export function isConnectivityError(error: unknown): boolean {
  // TypeORM releases a query runner whose connection failed: a transaction's next statement then
  // meets this instead of the connection error.
  if (error instanceof QueryRunnerProviderAlreadyReleasedError) return true;
  const candidate = error as { code?: unknown; driverError?: { code?: unknown; message?: unknown }; message?: unknown } | null;
  const code = String(candidate?.driverError?.code ?? candidate?.code ?? '');
  if (/^(08|57P)/.test(code) || ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT'].includes(code)) return true;
  const message = `${String(candidate?.message ?? '')} ${String(candidate?.driverError?.message ?? '')}`;
  return /Connection terminated|timeout exceeded when trying to connect|terminating connection|database system is (starting up|shutting down)|Client has encountered a connection error|Client was closed|connection error|ECONNREFUSED|ECONNRESET/i.test(
    message,
  );
}
