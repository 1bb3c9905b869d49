// Weight of the latest claim in the running rate: about the last 32 claims count.
const WEIGHT = 1 / 32;

// Reading first saves a replay between a third of and about as much as it costs a fresh key (the
// read, then the claim: one more round trip), so from 3 in 4 recorded keys it pays by any measure.
const LOOK_ABOVE = 0.75;

// Inserting first saves a fresh key about 0.45 of what it costs a recorded one (the INSERT, then
// the claim): it pays below 3 in 10 recorded keys, so it is used below 1 in 4.
const INSERT_BELOW = 0.25;

/** The statement a claim starts with; CLAIM alone, when neither cheaper one is likely to settle it. */
export type ClaimOpening = 'look' | 'insert' | 'claim';

/**
 * How often recent claims found their key already recorded and settled by that record (a replay,
 * a conflict, a key in use), as a running rate. When that is the common case, e.g. clients
 * retrying after an outage, a claim reads the record before it tries to write one; when nearly
 * every key is new, as in normal traffic, it tries a plain INSERT before the full claim.
 */
export class RecordedKeyRate {
  private rate = 0;

  /** What a claim should try first, judged by the recent rate. */
  get opening(): ClaimOpening {
    if (this.rate > LOOK_ABOVE) return 'look';
    return this.rate < INSERT_BELOW ? 'insert' : 'claim';
  }

  observe(recorded: boolean): void {
    this.rate += ((recorded ? 1 : 0) - this.rate) * WEIGHT;
  }
}
