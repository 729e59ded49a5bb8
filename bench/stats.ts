/**
 * @param values - at least one number
 * @return the median (the mean of the two middle values for an even count)
 * @throws {RangeError} when `values` is empty
 */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const lower = sorted[(sorted.length - 1) >> 1];
  const upper = sorted[sorted.length >> 1];
  if (lower === undefined || upper === undefined) throw new RangeError('median of no values');
  return (lower + upper) / 2;
}

/**
 * The nearest-rank percentile.
 * @param values - at least one number
 * @param percent - e.g. 99
 * @return the smallest value with at least `percent` % of the values at or below it
 * @throws {RangeError} when `values` is empty
 */
export function percentile(values: readonly number[], percent: number): number {
  const sorted = Float64Array.from(values).sort();
  const value = sorted[Math.max(0, Math.ceil((percent / 100) * sorted.length) - 1)];
  if (value === undefined) throw new RangeError('percentile of no values');
  return value;
}

/** Repeated measurements summed up: their median and how sure that median is. */
export interface Summary {
  readonly median: number;
  /** The confidence interval of the median: it lies between `low` and `high` with probability `confidence`. */
  readonly low: number;
  readonly high: number;
  readonly confidence: number;
  /** The measurements, in the order they were made. */
  readonly values: readonly number[];
}

/** The confidence the interval of the median aims for, when there are enough measurements. */
const CONFIDENCE = 0.9;

/**
 * Sums measurements up with their median and a distribution-free confidence interval for it: the
 * k-th smallest and k-th largest values, for the largest k that keeps the confidence at 90 % or
 * more. The median of the population lies below the k-th smallest value only if fewer than k
 * measurements fell below it, which has binomial odds (p = 1/2) whatever the distribution.
 * With too few measurements for 90 %, the interval is the whole range, at the confidence it has.
 * @param values - at least one measurement
 * @return the summary
 * @throws {RangeError} when `values` is empty
 */
export function summarize(values: readonly number[]): Summary {
  const sorted = [...values].sort((a, b) => a - b);
  const count = sorted.length;
  let k = 1;
  while (k + 1 <= count - k && coverage(count, k + 1) >= CONFIDENCE) k++;
  const low = sorted[k - 1];
  const high = sorted[count - k];
  if (low === undefined || high === undefined) throw new RangeError('summary of no values');
  return { median: median(values), low, high, confidence: coverage(count, k), values };
}

/**
 * Divides round by round, so that drift in the machine's load (which moves both runs of a round
 * together) cancels out.
 * @param numerators - one value per round
 * @param denominators - one value per round
 * @return the summary of `numerators[round] / denominators[round]`
 * @throws {RangeError} when the two do not have the same, non-zero, length
 */
export function ratio(numerators: readonly number[], denominators: readonly number[]): Summary {
  if (numerators.length !== denominators.length) throw new RangeError('ratio of runs with different round counts');
  return summarize(numerators.map((value, round) => value / (denominators[round] ?? NaN)));
}

/**
 * @param count - measurements
 * @param k - the interval runs from the k-th smallest to the k-th largest
 * @return the probability that the population's median lies in that interval
 */
function coverage(count: number, k: number): number {
  let outside = 0;
  let binomial = 1;
  for (let below = 0; below < k; below++) {
    outside += binomial;
    binomial = (binomial * (count - below)) / (below + 1);
  }
  return 1 - (2 * outside) / 2 ** count;
}
