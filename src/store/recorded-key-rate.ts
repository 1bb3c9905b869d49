// Weight of the latest claim in the running rate: about the last 32 claims count.
const WEIGHT = 1 / 32;

// Reading first saves a replay between a third of and about as much as it costs a fresh key (the
// read, then the claim: one more round trip), so from 3 in 4 recorded keys it pays by any measure.
const THRESHOLD = 0.75;

/**
 * How often recent claims found their key already recorded and settled by that record (a replay,
 * a conflict, a key in use), as a running rate. When that is the common case, e.g. clients
 * retrying after an outage, a claim reads the record before it tries to write one.
 */
export class RecordedKeyRate {
  private rate = 0;

  /** More than 3 in 4 recent claims found their key recorded. */
  get usual(): boolean {
    return this.rate > THRESHOLD;
  }

  observe(recorded: boolean): void {
    this.rate += ((recorded ? 1 : 0) - this.rate) * WEIGHT;
  }
}
