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

Sorting. The rank metrics share one sort per pair: relevance becomes int32 keys with the same order and ties, packed
with the region bit into one uint32 and sorted as a single operand (a 2-operand sort, far slower, only for a batch
with a heatmap whose keys do not fit 31 bits); the k-th largest key's run of ties is found by binary search, and
ROC-AUC comes from the sorted positions of the region pixels plus ½ per tied (region, outside) pair.

Selection. μ is reported for correctly predicted AUs only (label 1 and prediction 1, `correct_positives`).
"""

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
RANK_METRICS = ("rank_accuracy", "pointing_game", "top_k_intersection", "roc_auc")
_INT32_MAX = np.iinfo(np.int32).max


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


def _ordered_keys(relevance) -> jax.Array:
    """int32 keys with the order and ties of the finite float32 `relevance` (any shape): -0 and +0 are one key."""
    bits = jax.lax.bitcast_convert_type(jnp.where(relevance == 0, 0.0, relevance), jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _compressed_keys(keys) -> tuple[jax.Array, jax.Array]:
    """`keys` (P,) int32 mapped into [0, 2³¹) with the same order and ties, and whether they fit: (P,) int32, bool.

    The unused key ranges between the most negative value and zero and between zero and the smallest positive value
    are cut out, so that a key and a membership bit share one uint32 (`_sort_by_key_then_outside`). The keys fit unless
    the values on one side of zero span more binades than a float32 has to spare (e.g. 1e-30 to 1e30 on both sides).
    """
    negative, positive = keys < 0, keys > 0
    negative_low = jnp.min(jnp.where(negative, keys, 0))
    negative_span = jnp.where(jnp.any(negative), jnp.max(jnp.where(negative, keys, negative_low)) - negative_low + 1, 0)
    positive_low = jnp.min(jnp.where(positive, keys, _INT32_MAX))
    positive_range = jnp.max(jnp.where(positive, keys, positive_low)) - positive_low  # 0 if there are none
    compressed = jnp.where(negative, keys - negative_low,
                           jnp.where(positive, keys - positive_low + negative_span + 1, negative_span))
    return compressed, positive_range <= _INT32_MAX - 1 - negative_span


def _sort_by_key_then_outside(keys, inside, packed: bool) -> tuple[jax.Array, jax.Array]:
    """`keys` (..., P) ascending and `inside` (..., P) bool in that order, region pixels first among equal keys.

    packed: keys lie in [0, 2³¹) (`_compressed_keys`), so key and membership sort as one uint32, much cheaper than
    XLA's sort of two operands, which `packed=False` uses for any int32 keys.
    """
    outside = (~inside).astype(jnp.uint32)
    if packed:
        sorted_packed = jnp.sort((keys.astype(jnp.uint32) << 1) | outside, axis=-1)
        return (sorted_packed >> 1).astype(jnp.int32), (sorted_packed & 1) == 0
    sorted_keys, sorted_outside = jax.lax.sort((keys, outside), num_keys=2)
    return sorted_keys, sorted_outside == 0


def _expected_hits_in_top(sorted_keys, inside_so_far, k) -> jax.Array:
    """Expected number of region pixels among the `k` largest keys, ties at the k-th key in random order.

    `sorted_keys` (P,) ascending; `inside_so_far` (P + 1,): region pixels among the first j sorted ones; `k` in [1, P]
    (may be traced). The run of keys tied with the k-th largest is found by binary search.
    """
    threshold = sorted_keys[sorted_keys.size - k]
    # Unrolled: one fused computation, where the default while loop runs a kernel per step on a GPU.
    first = jnp.searchsorted(sorted_keys, threshold, side="left", method="scan_unrolled")
    after = jnp.searchsorted(sorted_keys, threshold, side="right", method="scan_unrolled")
    slots_left = k - (sorted_keys.size - after)
    inside_tied = inside_so_far[after] - inside_so_far[first]
    return inside_so_far[-1] - inside_so_far[after] + slots_left * (inside_tied / (after - first))


def _roc_auc(sorted_keys, sorted_inside, inside_so_far) -> jax.Array:
    """Mann-Whitney AUC of the keys separating region from outside pixels, from `_sort_by_key_then_outside` (P,) and
    `inside_so_far` (P + 1,) as in `_expected_hits_in_top`.

    With region pixels first among equal keys, p − q outside pixels lie before the q-th region pixel (0-based, at
    position p), all strictly below it; each outside pixel is preceded by every region pixel of its run of equal keys,
    which add ½ each.
    """
    n_pixels = sorted_keys.size
    n_inside = inside_so_far[-1]
    position = jnp.arange(n_pixels, dtype=jnp.int32)
    below = jnp.sum(jnp.where(sorted_inside, position, 0)) - n_inside * (n_inside - 1) // 2
    starts = jnp.concatenate([jnp.ones(1, bool), sorted_keys[1:] != sorted_keys[:-1]])
    # Region pixels before the run of each pixel: the count at the latest run start (a running max, as it only grows).
    before_run = jax.lax.cummax(jnp.where(starts, inside_so_far[:-1], 0))
    tied = jnp.sum(jnp.where(sorted_inside, 0, inside_so_far[1:] - before_run))
    pairs = jnp.maximum(n_inside * (n_pixels - n_inside), 1)
    return (2 * below + tied) / (2 * pairs)  # exact int32 counts up to P = 46,340 pixels


def _value_scores(relevance, inside) -> tuple[dict, jax.Array, jax.Array]:
    """μ, μ_w and mass accuracy of one pair, `relevance` (P,) float32 and `inside` (P,) bool: (values, whether the
    pair is scorable, whether its signed total is positive), all scalars."""
    n_pixels = relevance.size
    n_inside = _count(inside)
    positive = jnp.maximum(relevance, 0.0)
    positive_total = jnp.sum(positive)
    signed_total = jnp.sum(relevance)
    scorable = (jnp.all(jnp.isfinite(relevance)) & (n_inside > 0) & (n_inside < n_pixels)
                & (positive_total > 0))
    mu = jnp.sum(jnp.where(inside, positive, 0.0)) / jnp.where(positive_total > 0, positive_total, 1.0)
    values = {
            "mu": mu,
            "mu_weighted": mu * n_pixels / jnp.maximum(n_inside, 1),
            "mass_accuracy": (jnp.sum(jnp.where(inside, relevance, 0.0))
                              / jnp.where(signed_total > 0, signed_total, 1.0)),
    }
    return values, scorable, signed_total > 0


def _rank_scores(sorted_keys, sorted_inside, top_k: int) -> dict:
    """Rank accuracy, pointing game, top-k intersection and ROC AUC of one pair from its keys (P,) int32, ordered
    like its relevance, and its region (P,) bool, both sorted by `_sort_by_key_then_outside`."""
    inside_so_far = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(sorted_inside, dtype=jnp.int32)])
    region_size = jnp.maximum(inside_so_far[-1], 1)
    return {
            "rank_accuracy": _expected_hits_in_top(sorted_keys, inside_so_far, region_size) / region_size,
            "pointing_game": _expected_hits_in_top(sorted_keys, inside_so_far, 1),
            "top_k_intersection": _expected_hits_in_top(sorted_keys, inside_so_far, top_k) / top_k,
            "roc_auc": _roc_auc(sorted_keys, sorted_inside, inside_so_far),
    }


def _sorted_keys(relevance, inside) -> tuple[jax.Array, jax.Array]:
    """Keys of finite `relevance` (..., P) and `inside` (..., P), sorted by `_sort_by_key_then_outside`.

    One packed 1-operand sort per pair where every pair's keys fit (`_compressed_keys`), else the 2-operand sort of the
    int32 keys; both give the same order and ties, so every metric is the same either way.
    """
    keys = _ordered_keys(relevance)
    compressed, fits = jax.vmap(_compressed_keys)(keys.reshape(-1, keys.shape[-1]))

    def packed(operands):
        _, compressed, inside = operands
        return _sort_by_key_then_outside(compressed, inside, packed=True)

    def two_operands(operands):
        keys, _, inside = operands
        return _sort_by_key_then_outside(keys, inside, packed=False)

    return jax.lax.cond(jnp.all(fits), packed, two_operands, (keys, compressed.reshape(keys.shape), inside))


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

    heatmaps: (au, n, H, W) float pixel relevance, AUs in the order of the masks' AU set.
    masks: (n, au, H, W) bool AU regions.
    top_k: pixels for `top_k_intersection`, in [1, H·W]; None → `default_top_k(H, W)`.
    names: which of `METRIC_NAMES`; the others are not computed, and without any of `RANK_METRICS` the per-pair sort
        that they share (most of their cost) is left out.
    Returns `LocalisationScores` of (n, au) arrays, NaN-free, keyed by `names`.
    """
    names = check_metric_names(names)
    _check_shapes(heatmaps.shape, masks.shape)
    height, width = heatmaps.shape[2:]
    k = default_top_k(height, width) if top_k is None else top_k
    if not 1 <= k <= height * width:
        raise ValueError(f"top_k={k} must lie in [1, {height * width}] for {height}x{width} heatmaps")
    num_aus, n = heatmaps.shape[:2]
    relevance = heatmaps.astype(jnp.float32).transpose(1, 0, 2, 3).reshape(n, num_aus, height * width)
    inside = masks.reshape(n, num_aus, height * width).astype(bool)
    values, scorable, positive_signed_total = jax.vmap(jax.vmap(_value_scores))(relevance, inside)
    if set(names) & set(RANK_METRICS):
        finite = jnp.all(jnp.isfinite(relevance), axis=-1, keepdims=True)  # other pairs are undefined anyway
        ranked = _sorted_keys(jnp.where(finite, relevance, 0.0), inside)
        values |= jax.vmap(jax.vmap(functools.partial(_rank_scores, top_k=k)))(*ranked)
    defined = {name: scorable & positive_signed_total if name == "mass_accuracy" else scorable for name in names}
    return LocalisationScores({name: jnp.where(defined[name], values[name], 0.0).astype(jnp.float32)
                               for name in names}, defined)


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


def summarise_per_au(values, selected, defined, au_ids) -> tuple[AUSummary, ...]:
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


def summarise_scores(scores: LocalisationScores, selected, au_ids) -> dict:
    """`summarise_per_au` for every metric in `scores`: {metric name: tuple of AUSummary}."""
    return {name: summarise_per_au(scores.values[name], selected, scores.defined[name], au_ids)
            for name in scores.values}


def summarise_per_subject(values, selected, defined, subjects, au_ids) -> dict:
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
