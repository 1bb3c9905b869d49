import type { CapturedResponse } from './capture/response-capture';
import type { RunContext } from './run-context';
import type { StoredResponse } from './store/idempotency.store';

/**
 * What is kept of a captured response: its status, its headers but those in `unstored`, and its
 * body unless it was streamed out or is over `maxBytes` (then `null`: completed, not replayable);
 * sealed by the run's cipher when there is one.
 */
export function toStoredResponse(
  captured: CapturedResponse,
  { unstored, cipher }: RunContext,
  maxBytes: number,
): StoredResponse {
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(captured.headers)) {
    if (value !== undefined && !unstored.has(name)) headers[name] = typeof value === 'number' ? String(value) : value;
  }
  const body = captured.body !== null && captured.body.length <= maxBytes ? captured.body : null;
  const stored = { status: captured.status, headers, body };
  return cipher ? cipher.seal(stored) : stored;
}
