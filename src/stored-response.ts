import type { CapturedResponse } from './capture/response-capture';
import type { StoredResponse } from './store/idempotency.store';

/**
 * What is kept of a captured response: its status, its headers but those in `unstored`, and its
 * body unless it was streamed out or is over `maxBytes` (then `null`: completed, not replayable).
 */
export function toStoredResponse(captured: CapturedResponse, unstored: ReadonlySet<string>, maxBytes: number): StoredResponse {
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(captured.headers)) {
    if (value !== undefined && !unstored.has(name)) headers[name] = typeof value === 'number' ? String(value) : value;
  }
  const body = captured.body !== null && captured.body.length <= maxBytes ? captured.body : null;
  return { status: captured.status, headers, body };
}
