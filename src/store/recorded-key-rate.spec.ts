import { RecordedKeyRate, type ClaimOpening } from './recorded-key-rate';

const openingsAfter = (rate: RecordedKeyRate, recorded: boolean, claims: number): ClaimOpening[] =>
  Array.from({ length: claims }, () => {
    rate.observe(recorded);
    return rate.opening;
  });

describe('RecordedKeyRate', () => {
  it('starts with a plain INSERT, as nearly every key is new in normal traffic', () => {
    expect(new RecordedKeyRate().opening).toBe('insert');
  });

  // With the latest claim weighing 1/32, a run of recorded keys passes 1 in 4 at the 10th and 3 in 4 at the 44th.
  it('moves to the full claim, then to reading first, as recorded keys become the rule', () => {
    expect(openingsAfter(new RecordedKeyRate(), true, 44)).toEqual([
      ...Array<ClaimOpening>(9).fill('insert'),
      ...Array<ClaimOpening>(34).fill('claim'),
      'look',
    ]);
  });

  it('goes back to INSERT once fresh keys are the rule again', () => {
    const rate = new RecordedKeyRate();
    openingsAfter(rate, true, 44);
    expect(openingsAfter(rate, false, 35)).toEqual([...Array<ClaimOpening>(34).fill('claim'), 'insert']);
  });
});
