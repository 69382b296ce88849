"""Per-AU classification metrics: F1, precision, recall and support at a decision threshold.

An AU whose evaluation set holds fewer than `min_support` positives gets no scores: its F1 would be a meaningless
number (the paper leaves AU27 out on UNBC for having 16 images). It is kept in the result with the reason, so a table
shows "n/a" and says why instead of a 0.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from aujax.analysis import bootstrap as bootstrap_lib


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """How the F1 intervals are drawn (`aujax.analysis.bootstrap`): `samples` resamples of the subjects, seeded by
    `seed` (config.seed), intervals at `level` (config.analysis)."""

    samples: int
    seed: int
    level: float = 0.95


def decisions(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """(n, A) probabilities in [0, 1] -> (n, A) uint8 decisions (1 where probability >= threshold)."""
    return (np.asarray(probabilities) >= threshold).astype(np.uint8)


def per_au_scores(labels: np.ndarray, predictions: np.ndarray, min_support: int = 1, *,
                  au_ids: Sequence[int], subjects=None, bootstrap: Bootstrap | None = None) -> dict:
    """Precision, recall, F1 and support of each AU.

    Args:
      labels, predictions: (n, A) {0, 1}, columns in `au_ids` order.
      min_support: fewest positive labels for an AU to be scored.
      au_ids: the A AUs of the columns (the records' `au_ids`).
      subjects, bootstrap: (n,) the images' subjects and how to resample them: each AU's F1 gets an interval by
        bootstrap over subjects (`ci_low`, `ci_high`; None where F1 is None or there are fewer than 2 subjects).

    Returns:
      {"AU4": {"f1", "precision", "recall", "support", "n", "reason"}, ...}: scores are floats in [0, 1] or None
      with `reason` saying why; `support` is the number of positive labels, `n` the number of images.
    """
    labels = np.asarray(labels, bool)
    predictions = np.asarray(predictions, bool)
    true_pos = (labels & predictions).sum(0)
    pred_pos = predictions.sum(0)
    support = labels.sum(0)
    if labels.shape != predictions.shape or labels.ndim != 2 or labels.shape[1] != len(au_ids):
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must both be (n, {len(au_ids)}), "
                         f"one column per AU of {tuple(au_ids)}")
    scores = {}
    for col, au in enumerate(au_ids):
        entry = {"support": int(support[col]), "n": int(len(labels)), "f1": None, "precision": None,
                 "recall": None, "reason": ""}
        if support[col] < max(min_support, 1):
            entry["reason"] = f"only {support[col]} positive images (fewer than {max(min_support, 1)})"
        else:
            recall = true_pos[col] / support[col]
            precision = true_pos[col] / pred_pos[col] if pred_pos[col] else 0.0
            f1 = 2 * true_pos[col] / (support[col] + pred_pos[col])
            entry.update(f1=float(f1), precision=float(precision), recall=float(recall))
        scores[f"AU{au}"] = entry
    if bootstrap is not None:
        low, high = bootstrap_lib.f1_intervals(labels, predictions, subjects, bootstrap.samples, bootstrap.seed,
                                               min_support, bootstrap.level)
        _add_intervals(scores, low, high)
    return scores


def _add_intervals(scores: dict, low: np.ndarray, high: np.ndarray) -> None:
    """Each AU entry of `scores` gets `ci_low` and `ci_high` (None where NaN), in the entries' order."""
    for entry, lo, hi in zip(scores.values(), low, high):
        entry.update(ci_low=None if np.isnan(lo) else float(lo), ci_high=None if np.isnan(hi) else float(hi))


def mean_f1(scores: dict) -> float | None:
    """Mean F1 over the AUs that were scored; None if none was."""
    values = [s["f1"] for s in scores.values() if s["f1"] is not None]
    return float(np.mean(values)) if values else None


def mean_over_folds(fold_scores: list[dict], bootstrap: Bootstrap | None = None) -> dict:
    """Average each AU's F1, precision and recall over the folds where it was scored (with the std and fold count);
    the AUs are those of the folds' scores (`per_au_scores` of the same AU set), in their order. With `bootstrap`, the
    mean F1's interval by bootstrap over the folds (one held-out subject each)."""
    summary = {}
    for au in (fold_scores[0] if fold_scores else {}):
        scored = [s[au] for s in fold_scores if s[au]["f1"] is not None]
        entry = {"folds": len(scored), "support": int(sum(s[au]["support"] for s in fold_scores)), "reason": ""}
        for key in ("f1", "precision", "recall"):
            entry[key] = float(np.mean([s[key] for s in scored])) if scored else None
        entry["f1_std"] = float(np.std([s["f1"] for s in scored])) if scored else None
        if not scored:
            entry["reason"] = "scored in no fold"
        summary[au] = entry
    if bootstrap is not None:
        f1 = np.array([[np.nan if s[au]["f1"] is None else s[au]["f1"] for au in summary] for s in fold_scores])
        _add_intervals(summary, *bootstrap_lib.mean_intervals(np.nan_to_num(f1), ~np.isnan(f1),
                                                              np.arange(len(fold_scores)), bootstrap.samples,
                                                              bootstrap.seed, bootstrap.level))
    return summary
