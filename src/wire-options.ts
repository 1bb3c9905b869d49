import { IdempotencyConfigurationError } from './idempotency.exceptions';
import type { IdempotencyModuleOptions, ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { formatProblemDetails } from './problem-details';

const ERROR_FORMATS: string[] = ['patomic', 'problem+json'];

/** An HTTP field name (RFC 9110 token). */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_NAME_WANTED = 'a header name (letters, digits, "-")';

/**
 * Checks the options that shape what goes over the wire (error format, header names, duplicates in
 * flight), their defaults applied, and picks the error renderer of the format unless the host gave its own.
 */
export function resolveWireOptions(resolved: ResolvedIdempotencyOptions, given: IdempotencyModuleOptions): void {
  if (!ERROR_FORMATS.includes(resolved.errorFormat)) {
    refuse('errorFormat', ERROR_FORMATS.join(' or '), resolved.errorFormat);
  }
  for (const name of ['header', 'replayedHeader'] as const) {
    const value = resolved[name];
    if (value === false && name === 'replayedHeader') continue;
    if (typeof value !== 'string' || !HEADER_NAME.test(value)) refuse(name, HEADER_NAME_WANTED, value);
  }
  if (!['reject', 'wait'].includes(resolved.inFlight)) refuse('inFlight', "'reject' or 'wait'", resolved.inFlight);
  for (const name of ['inFlightWait', 'inFlightWaiters'] as const) {
    if (!Number.isInteger(resolved[name]) || resolved[name] <= 0) refuse(name, 'a positive integer', resolved[name]);
  }
  if (resolved.errorFormat === 'problem+json' && !given.formatError) resolved.formatError = formatProblemDetails;
}

function refuse(name: keyof IdempotencyModuleOptions, expected: string, got: unknown): never {
  const problem = `IdempotencyModule option "${name}" must be ${expected}`;
  throw new IdempotencyConfigurationError(`${problem}; got ${String(got)}.`);
}
