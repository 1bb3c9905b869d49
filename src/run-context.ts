import type { HttpExchange } from './capture/http-exchange';
import type { RecordCipher } from './encryption/record-sealer';
import type { RequestTrace } from './idempotency-events';

/** What a run (leased or transactional) of a claimed request needs to know about it. */
export interface RunContext {
  exchange: HttpExchange;
  trace: RequestTrace;
  /** Headers never stored, and kept as the host set them when a response is replaced. */
  unstored: ReadonlySet<string>;
  /** Seals the answer before it is stored; set only with the `encryption` option. */
  cipher?: RecordCipher;
}
