"""Per-AU classification metrics: F1, precision, recall and support at a decision threshold.

An AU whose evaluation set holds fewer than `min_support` positives gets no scores: its F1 would be a meaningless
number (the paper leaves AU27 out on UNBC for having 16 images). It is kept in the result with the reason, so a table
shows "n/a" and says why instead of a 0.
"""

from collections.abc import Sequence

import numpy as np


def decisions(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """(n, A) probabilities in [0, 1] -> (n, A) uint8 decisions (1 where probability >= threshold)."""
    return (np.asarray(probabilities) >= threshold).astype(np.uint8)


def per_au_scores(labels: np.ndarray, predictions: np.ndarray, min_support: int = 1, *,
                  au_ids: Sequence[int]) -> dict:
    """Precision, recall, F1 and support of each AU.

    Args:
      labels, predictions: (n, A) {0, 1}, columns in `au_ids` order.
      min_support: fewest positive labels for an AU to be scored.
      au_ids: the A AUs of the columns (the records' `au_ids`).

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
    return scores


def mean_f1(scores: dict) -> float | None:
    """Mean F1 over the AUs that were scored; None if none was."""
    values = [s["f1"] for s in scores.values() if s["f1"] is not None]
    return float(np.mean(values)) if values else None


def mean_over_folds(fold_scores: list[dict]) -> dict:
    """Average each AU's F1, precision and recall over the folds where it was scored (with the std and fold count);
    the AUs are those of the folds' scores (`per_au_scores` of the same AU set), in their order."""
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
    return summary
