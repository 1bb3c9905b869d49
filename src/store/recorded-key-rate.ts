// Weight of the latest claim in the running rate: about the last 32 claims count.
const WEIGHT = 1 / 32;

/**
 * How often recent claims found their key already recorded and settled by that record (a replay,
 * a conflict, a key in use), as a running rate. When that is the common case, e.g. clients
 * retrying after an outage, a claim reads the record before it tries to write one.
 */
export class RecordedKeyRate {
  private rate = 0;

  /** More than half of recent claims found their key recorded. */
  get usual(): boolean {
    return this.rate > 0.5;
  }

  observe(recorded: boolean): void {
    this.rate += ((recorded ? 1 : 0) - this.rate) * WEIGHT;
  }
}
