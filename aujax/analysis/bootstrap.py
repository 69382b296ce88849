"""How sure each number is: 95 % intervals by bootstrap over subjects, for per-AU F1 (Tables 1-2), per-AU mean μ
(Table 3) and the paired difference in μ between two composites on the same images.

Images of one subject are not independent (same face, same session), so the resampled unit is the subject: a bootstrap
sample draws S subjects with replacement from the S subjects there are and keeps every image of each, as often as the
subject was drawn (`subject_weights`: multinomial counts, (B, S)). A statistic is recomputed on each of the B samples
from per-subject sums, and the interval is the percentile interval of the B values ((1 − level)/2 and (1 + level)/2
quantiles, `interval`). Samples where the statistic is undefined (an AU with fewer than `min_support` positives, or no
μ pair) are left out; an interval over no sample is NaN, and so is one over fewer than `MIN_SUBJECTS` subjects with data
(one subject resampled is always itself: no spread to measure). The generator is seeded by `seed` (the run's `config.seed`),
so a run gives the same intervals every time, and the same subjects give the same samples to every statistic — which
is what pairs the composites in `paired_difference`.
"""

import dataclasses

import numpy as np

MIN_SUBJECTS = 2


def subject_weights(subjects, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image → subject index (n,), weights (samples, S) int): how often each of the S subjects (sorted) is drawn
    in each bootstrap sample."""
    names, inverse = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    if samples < 1 or len(names) == 0:
        raise ValueError(f"bootstrap: {samples} samples over {len(names)} subjects (expected at least one of each)")
    rng = np.random.default_rng(seed)
    return inverse, rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=samples)


def _per_subject(values: np.ndarray, inverse: np.ndarray, count: int) -> np.ndarray:
    """(n, ...) image values summed per subject: (S, ...) float64."""
    sums = np.zeros((count, *values.shape[1:]), np.float64)
    np.add.at(sums, inverse, values)
    return sums


def interval(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 of bootstrap values (B, ...), NaN entries left out: (low, high), NaN where
    every sample is NaN."""
    values = np.asarray(values, np.float64)
    low, high = np.full(values.shape[1:], np.nan), np.full(values.shape[1:], np.nan)
    some = np.any(np.isfinite(values), axis=0)
    if np.any(some):
        quantiles = np.nanquantile(values[:, some], [(1 - level) / 2, (1 + level) / 2], axis=0)
        low[some], high[some] = quantiles
    return low, high


def f1_intervals(labels, predictions, subjects, samples: int, seed: int, min_support: int = 1,
                 level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per-AU F1 intervals (low (A,), high (A,)) of {0, 1} `labels` and `predictions` (n, A) of images of `subjects`
    (n,); F1 = 2 TP / (positives + predicted positives) as `aujax.metrics.per_au_scores`, undefined in a sample with
    fewer than `min_support` positives; NaN for an AU with fewer in the data themselves (not scored, no interval)."""
    labels, predictions = np.asarray(labels, bool), np.asarray(predictions, bool)
    inverse, weights = subject_weights(subjects, samples, seed)
    count = weights.shape[1]
    true_pos, support, predicted = (weights @ _per_subject(x.astype(np.float64), inverse, count)
                                    for x in (labels & predictions, labels, predictions))
    enough = max(min_support, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(support >= enough, 2 * true_pos / (support + predicted), np.nan)
    low, high = interval(f1, level)
    scored = (labels.sum(axis=0) >= enough) & (count >= MIN_SUBJECTS)
    return np.where(scored, low, np.nan), np.where(scored, high, np.nan)


def mean_intervals(values, used, subjects, samples: int, seed: int, level: float = 0.95
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Intervals (low (A,), high (A,)) of the per-AU mean of `values` (n, A) over the `used` (n, A) pairs (Table 3's
    μ: the mean over all used pairs of all images), images of `subjects` (n,)."""
    used = np.asarray(used, bool)
    inverse, weights = subject_weights(subjects, samples, seed)
    count = weights.shape[1]
    per_subject_pairs = _per_subject(used.astype(np.float64), inverse, count)
    sums = weights @ _per_subject(np.where(used, values, 0.0), inverse, count)
    pairs = weights @ per_subject_pairs
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = interval(np.where(pairs > 0, sums / pairs, np.nan), level)
    enough = np.sum(per_subject_pairs > 0, axis=0) >= MIN_SUBJECTS
    return np.where(enough, low, np.nan), np.where(enough, high, np.nan)


@dataclasses.dataclass(frozen=True)
class Difference:
    """Per AU, the mean over pairs used under both composites of μ_a − μ_b (`difference` (A,), NaN without pairs),
    its interval (`low`, `high`), the pairs `n` (A,), and whether the interval excludes 0 (`real`)."""

    difference: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray

    @property
    def real(self) -> np.ndarray:
        return (self.low > 0) | (self.high < 0)


def paired_difference(values_a, values_b, used_a, used_b, subjects, samples: int, seed: int,
                      level: float = 0.95) -> Difference:
    """Paired bootstrap of μ_a − μ_b on the same images: `values_*` (n, A) μ of two composites, `used_*` (n, A)
    their used pairs; only pairs used under both count, and each sample resamples subjects once for both."""
    used = np.asarray(used_a, bool) & np.asarray(used_b, bool)
    delta = np.where(used, np.asarray(values_a, np.float64) - np.asarray(values_b, np.float64), 0.0)
    n = used.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        difference = np.where(n > 0, delta.sum(axis=0) / n, np.nan)
    low, high = mean_intervals(delta, used, subjects, samples, seed, level)
    return Difference(difference, low, high, n)
