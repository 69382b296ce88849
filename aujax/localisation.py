"""How much of an AU's relevance lies in that AU's face region: μ (Rieger et al. 2020) and related metrics.

Notation, for one (image, AU) pair. `r` is the pixel heatmap of that AU flattened to P pixels (relevance summed
over the colour channels), `G` the AU's region (a set of M pixels), `r⁺ = max(r, 0)` its positive part and
`top_k(r)` the k pixels of largest relevance.

    mu                  μ = Σ_{i∈G} r⁺_i / Σ_i r⁺_i
                        The paper's metric (Rieger et al., ESANN 2020, Table 3): the share of positive relevance
                        that falls inside the region.
    mu_weighted         μ_w = μ · P / M
                        μ weighted by the inverse region size (Kohlbrenner et al., IJCNN 2020, "Towards best practice
                        in explaining neural network decisions with LRP"): 1 means "no better than uniform relevance".
    mass_accuracy       Σ_{i∈G} r_i / Σ_i r_i
                        Relevance mass accuracy (Arras et al., Inf. Fusion 2022, CLEVR-XAI) as Quantus computes it:
                        signed relevance, so negative relevance outside the region can push it above 1.
    rank_accuracy       |top_M(r) ∩ G| / M
                        Relevance rank accuracy (Arras et al. 2022): the share of the M most relevant pixels that lie
                        in the region.
    pointing_game       1[argmax_i r_i ∈ G]
                        Pointing game (Zhang et al., IJCV 2018) without tolerance margin.
    top_k_intersection  |top_k(r) ∩ G| / k
                        Top-k intersection (Theiner et al. 2021). Quantus' default k = 1000 is meant for 224x224
                        inputs; `default_top_k` keeps that share of the image (2 %): k = round(1000 · P / 224²),
                        250 on 112x112 crops.
    roc_auc             AUC = 1 / (M (P − M)) · Σ_{i∈G} Σ_{j∉G} (1[r_i > r_j] + ½ · 1[r_i = r_j])
                        Relevance as a score for region membership: the Mann-Whitney U statistic with average ranks
                        for ties, i.e. the probability that a random region pixel outranks a random outside pixel.

Ties. Where several pixels share the k-th largest relevance t, the top-k set is not unique; the rank, pointing and
top-k metrics take its expectation under a uniformly random order of the tied pixels:
|top_k(r) ∩ G| = |{i ∈ G : r_i > t}| + (k − |{i : r_i > t}|) · |{i ∈ G : r_i = t}| / |{i : r_i = t}|.
So a tied maximum counts as the share of maximal pixels inside the region. Without ties this is the plain count.

Undefined pairs. A pair is scored only where its heatmap is finite, its region is proper (0 < M < P: an empty
region has nothing to hit, a full-image region makes every metric trivial) and the image has positive relevance
(Σ r⁺ > 0); mass accuracy further needs Σ r > 0, since a ratio to a signed total at or below zero means nothing.
Undefined entries carry value 0 and `defined = False`; they are never averaged in (`summarise_per_au`).

Quantus 0.6.0 (`abs=False, normalise=False`) gives the same numbers for mu (`AttributionLocalisation` with
`positive_attributions=True`), mass_accuracy (`RelevanceMassAccuracy`, where defined here), rank_accuracy
(`RelevanceRankAccuracy`), pointing_game (`PointingGame`), top_k_intersection (`TopKIntersection`) and roc_auc (`AUC`),
except that it breaks ties by `np.argsort` order (rank, top-k) or counts any tied maximum as a hit (pointing game),
and that its `AttributionLocalisation(weighted=True)` multiplies μ by region size / size of `x_batch[2:]` instead of
the weighting above; tests/test_localisation.py checks this.

Selection. μ is reported for correctly predicted AUs only (label 1 and prediction 1, `correct_positives`).
"""

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from aujax import facs

METRIC_NAMES = (
        "mu",
        "mu_weighted",
        "mass_accuracy",
        "rank_accuracy",
        "pointing_game",
        "top_k_intersection",
        "roc_auc",
)
QUANTUS_TOP_K = 1000
QUANTUS_IMAGE_PIXELS = 224 * 224


class LocalisationScores(NamedTuple):
    """Per-pair scores: `values[name]` float32 (n, au), 0 where undefined; `defined[name]` bool (n, au)."""

    values: dict
    defined: dict


@dataclasses.dataclass(frozen=True)
class AUSummary:
    """One AU's mean ± std (population, ddof=0) over the `n` selected and defined pairs.

    `n_excluded` counts selected pairs that were undefined. `mean`/`std` are None when n == 0, and `reason` says why.
    """

    au: int
    mean: float | None
    std: float | None
    n: int
    n_excluded: int
    reason: str | None


def default_top_k(height: int, width: int) -> int:
    """Quantus' top-k (1000 pixels of a 224x224 image) scaled to a `height` x `width` image: 250 for 112x112."""
    return max(1, round(QUANTUS_TOP_K * height * width / QUANTUS_IMAGE_PIXELS))


def correct_positives(labels, predictions) -> np.ndarray:
    """(n, au) bool: AU present and predicted present, from {0, 1} `labels` and `predictions` (n, au)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must both be (n, au)")
    return (labels == 1) & (predictions == 1)


def _count(flags) -> jax.Array:
    return jnp.sum(flags, dtype=jnp.int32)


def _expected_hits_in_top(sorted_relevance, sorted_inside, k) -> jax.Array:
    """Expected number of region pixels among the `k` most relevant, ties at the k-th value in random order.

    `sorted_relevance` (P,) ascending, `sorted_inside` (P,) bool in the same order; `k` in [1, P] (may be traced).
    """
    threshold = sorted_relevance[sorted_relevance.size - k]
    above = sorted_relevance > threshold
    tied = sorted_relevance == threshold
    slots_left = k - _count(above)
    return _count(above & sorted_inside) + slots_left * (_count(tied & sorted_inside) / _count(tied))


def _roc_auc(sorted_relevance, sorted_inside, n_inside) -> jax.Array:
    """Mann-Whitney AUC of relevance separating region from outside pixels; both (P,) ascending by relevance."""
    outside_before = jnp.concatenate([
            jnp.zeros(1, jnp.int32),
            jnp.cumsum(~sorted_inside, dtype=jnp.int32),
    ])  # outside_before[j]: outside pixels among the j least relevant
    # Bounds of each pixel's run of tied values, [first_tied, after_tied), by running max / min over the run starts
    # and ends (a binary search per pixel cost twice the sort on an H100).
    position = jnp.arange(sorted_relevance.size)
    starts = jnp.concatenate([jnp.ones(1, bool), sorted_relevance[1:] != sorted_relevance[:-1]])
    ends = jnp.concatenate([starts[1:], jnp.ones(1, bool)])
    first_tied = jax.lax.cummax(jnp.where(starts, position, 0))
    after_tied = jax.lax.cummin(jnp.where(ends, position + 1, sorted_relevance.size), reverse=True)
    n_outside = jnp.maximum(outside_before[-1], 1)
    # Per region pixel: outside pixels below it count 1, tied ones 1/2, as a share of all outside pixels.
    wins = (outside_before[first_tied] + outside_before[after_tied]) / (2 * n_outside)
    return jnp.sum(jnp.where(sorted_inside, wins, 0.0)) / jnp.maximum(n_inside, 1)


def _pair_scores(heatmap, mask, top_k: int) -> tuple[dict, dict]:
    """All metrics for one (H, W) heatmap and (H, W) bool region: ({name: value}, {name: defined}) scalars."""
    relevance = heatmap.reshape(-1).astype(jnp.float32)
    inside = mask.reshape(-1).astype(bool)
    n_pixels = relevance.size
    n_inside = _count(inside)
    positive = jnp.maximum(relevance, 0.0)
    positive_total = jnp.sum(positive)
    signed_total = jnp.sum(relevance)
    scorable = (jnp.all(jnp.isfinite(relevance)) & (n_inside > 0) & (n_inside < n_pixels)
                & (positive_total > 0))
    sorted_relevance, sorted_inside = jax.lax.sort((relevance, inside), num_keys=1)
    region_size = jnp.maximum(n_inside, 1)

    mu = jnp.sum(jnp.where(inside, positive, 0.0)) / jnp.where(positive_total > 0, positive_total, 1.0)
    values = {
            "mu": mu,
            "mu_weighted": mu * n_pixels / region_size,
            "mass_accuracy": (jnp.sum(jnp.where(inside, relevance, 0.0))
                              / jnp.where(signed_total > 0, signed_total, 1.0)),
            "rank_accuracy": _expected_hits_in_top(sorted_relevance, sorted_inside, region_size) / region_size,
            "pointing_game": _expected_hits_in_top(sorted_relevance, sorted_inside, 1),
            "top_k_intersection": _expected_hits_in_top(sorted_relevance, sorted_inside, top_k) / top_k,
            "roc_auc": _roc_auc(sorted_relevance, sorted_inside, n_inside),
    }
    defined = {name: scorable for name in METRIC_NAMES}
    defined["mass_accuracy"] = scorable & (signed_total > 0)
    values = {name: jnp.where(defined[name], value, 0.0).astype(jnp.float32) for name, value in values.items()}
    return values, defined


def _check_shapes(heatmap_shape, mask_shape) -> None:
    if len(heatmap_shape) != 4 or len(mask_shape) != 4:
        raise ValueError(f"heatmaps must be (au, n, H, W) and masks (n, au, H, W); got {heatmap_shape} and "
                         f"{mask_shape}")
    num_aus, n, height, width = heatmap_shape
    if tuple(mask_shape) != (n, num_aus, height, width):
        raise ValueError(f"masks {tuple(mask_shape)} do not match heatmaps {tuple(heatmap_shape)}: expected "
                         f"{(n, num_aus, height, width)}")


def check_metric_names(names) -> tuple[str, ...]:
    """`names` as a tuple; ValueError naming any that is not in `METRIC_NAMES` (or an empty selection)."""
    names = tuple(names)
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown or not names:
        raise ValueError(f"localisation metrics {unknown or '()'}: expected some of {', '.join(METRIC_NAMES)}")
    return names


@functools.partial(jax.jit, static_argnames=("top_k", "names"))
def localisation_metrics(heatmaps, masks, top_k: int | None = None,
                         names: tuple[str, ...] = METRIC_NAMES) -> LocalisationScores:
    """The metrics `names` for every (image, AU) pair, vmapped over images and AUs.

    heatmaps: (au, n, H, W) float pixel relevance, AUs in `facs.AU_IDS` order.
    masks: (n, au, H, W) bool AU regions.
    top_k: pixels for `top_k_intersection`, in [1, H·W]; None → `default_top_k(H, W)`.
    names: which of `METRIC_NAMES`; the others are not computed (XLA drops them), so μ alone skips the per-pair sort
        that the rank-based metrics need (most of their cost).
    Returns `LocalisationScores` of (n, au) arrays, NaN-free, keyed by `names`.
    """
    names = check_metric_names(names)
    _check_shapes(heatmaps.shape, masks.shape)
    height, width = heatmaps.shape[2:]
    k = default_top_k(height, width) if top_k is None else top_k
    if not 1 <= k <= height * width:
        raise ValueError(f"top_k={k} must lie in [1, {height * width}] for {height}x{width} heatmaps")
    score_aus = jax.vmap(functools.partial(_pair_scores, top_k=k))  # (au, H, W), (au, H, W)
    values, defined = jax.vmap(score_aus, in_axes=(1, 0))(heatmaps, masks)
    return LocalisationScores({name: values[name] for name in names}, {name: defined[name] for name in names})


def _pad_images(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    if array.shape[axis] == size:
        return array
    padding = [(0, 0)] * array.ndim
    padding[axis] = (0, size - array.shape[axis])
    return np.pad(array, padding)


def localisation_metrics_chunked(heatmaps: np.ndarray, masks: np.ndarray, chunk_size: int = 128,
                                 top_k: int | None = None,
                                 names: tuple[str, ...] = METRIC_NAMES) -> LocalisationScores:
    """`localisation_metrics` over `chunk_size` images at a time, for datasets larger than device memory.

    heatmaps (au, n, H, W) and masks (n, au, H, W) stay on the host (numpy, memmaps work); results come back as
    numpy (n, au) arrays. The last chunk is zero-padded so that every chunk compiles to the same program.
    """
    _check_shapes(heatmaps.shape, masks.shape)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1")
    num_aus, n = heatmaps.shape[:2]
    chunk_size = min(chunk_size, max(n, 1))
    parts = []
    pending = None
    for start in range(0, n, chunk_size):
        heatmap_chunk = heatmaps[:, start:start + chunk_size]
        size = heatmap_chunk.shape[1]
        scores = localisation_metrics(_pad_images(np.asarray(heatmap_chunk), 1, chunk_size),
                                      _pad_images(np.asarray(masks[start:start + chunk_size]), 0, chunk_size),
                                      top_k=top_k, names=names)
        if pending is not None:  # fetch the previous chunk while this one runs
            parts.append(_fetch(*pending))
        pending = (scores, size)
    if pending is not None:
        parts.append(_fetch(*pending))
    return concatenate_scores(parts, num_aus, check_metric_names(names))


def _fetch(scores: LocalisationScores, size: int) -> LocalisationScores:
    values, defined = jax.device_get((scores.values, scores.defined))
    return LocalisationScores({name: v[:size] for name, v in values.items()},
                              {name: d[:size] for name, d in defined.items()})


def concatenate_scores(parts: list, num_aus: int, names: tuple[str, ...]) -> LocalisationScores:
    """The (n, au) scores of consecutive chunks as one `LocalisationScores` (numpy), keyed by `names`."""
    if not parts:
        return LocalisationScores({name: np.zeros((0, num_aus), np.float32) for name in names},
                                  {name: np.zeros((0, num_aus), bool) for name in names})
    return LocalisationScores(
            {name: np.concatenate([part.values[name] for part in parts]) for name in names},
            {name: np.concatenate([part.defined[name] for part in parts]) for name in names},
    )


def summarise_per_au(values, selected, defined, au_ids=facs.AU_IDS) -> tuple[AUSummary, ...]:
    """Per-AU mean, std and counts of one metric over the selected and defined pairs; NaN-free.

    values: (n, au) float; selected: (n, au) bool, e.g. `correct_positives(labels, predictions)`; defined: (n, au)
    bool from `LocalisationScores.defined`. One `AUSummary` per AU of `au_ids`, in that order.
    """
    values, selected, defined = np.asarray(values), np.asarray(selected, bool), np.asarray(defined, bool)
    if not values.shape == selected.shape == defined.shape or values.ndim != 2 or values.shape[1] != len(au_ids):
        raise ValueError(f"values {values.shape}, selected {selected.shape} and defined {defined.shape} must all be "
                         f"(n, {len(au_ids)})")
    used = selected & defined
    if not np.all(np.isfinite(values[used])):
        raise ValueError("values hold NaN or inf at selected, defined pairs")
    return tuple(_summarise_column(au, values[:, j][used[:, j]], int(np.sum(selected[:, j] & ~defined[:, j])))
                 for j, au in enumerate(au_ids))


def _summarise_column(au: int, used_values: np.ndarray, n_excluded: int) -> AUSummary:
    n = used_values.size
    if n == 0:
        reason = (f"all {n_excluded} selected pairs undefined" if n_excluded else "no selected pairs")
        return AUSummary(au, None, None, 0, n_excluded, reason)
    used_values = used_values.astype(np.float64)
    return AUSummary(au, float(np.mean(used_values)), float(np.std(used_values)), n, n_excluded, None)


def summarise_scores(scores: LocalisationScores, selected, au_ids=facs.AU_IDS) -> dict:
    """`summarise_per_au` for every metric in `scores`: {metric name: tuple of AUSummary}."""
    return {name: summarise_per_au(scores.values[name], selected, scores.defined[name], au_ids)
            for name in scores.values}


def summarise_per_subject(values, selected, defined, subjects, au_ids=facs.AU_IDS) -> dict:
    """`summarise_per_au` within each subject: {subject: tuple of AUSummary}, subjects sorted.

    subjects: (n,) str, the subject of each image row.
    """
    subjects = np.asarray(subjects)
    values = np.asarray(values)
    if subjects.shape != (values.shape[0],):
        raise ValueError(f"subjects {subjects.shape} must be ({values.shape[0]},), one per image row of values")
    selected, defined = np.asarray(selected), np.asarray(defined)
    summaries = {}
    for subject in np.unique(subjects):
        rows = subjects == subject
        summaries[str(subject)] = summarise_per_au(values[rows], selected[rows], defined[rows], au_ids)
    return summaries


def pairs_per_second(heatmaps, masks, top_k: int | None = None, repeats: int = 5,
                     names: tuple[str, ...] = METRIC_NAMES) -> float:
    """(image, AU) pairs scored per second by `localisation_metrics` on these arrays, compilation excluded.

    Put heatmaps (au, n, H, W) and masks (n, au, H, W) on the device first (`jax.device_put`) to time the metrics
    alone, not the transfer.
    """
    jax.block_until_ready(localisation_metrics(heatmaps, masks, top_k=top_k, names=names))
    start = time.perf_counter()
    for _ in range(repeats):
        scores = localisation_metrics(heatmaps, masks, top_k=top_k, names=names)
    jax.block_until_ready(scores)
    num_aus, n = heatmaps.shape[:2]
    return repeats * n * num_aus / (time.perf_counter() - start)
