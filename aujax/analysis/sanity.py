"""Sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps"): cascading randomisation of the model's
parameters from the head down. Heatmaps that hardly change when the parameters they explain are replaced by random
ones do not explain the model (`results/sanity_randomisation.csv|json`).

Levels. The modules are the top-level entries of `variables['params']` in the order the model defines them (that of
its fresh init: stem first, head last), so this works for any Flax architecture. `cascade_levels` groups them
(`GRANULARITIES`): "stage" by the part of the name before the first "_" (the ResNet-18: stem, stage1 .. stage4, head:
6 levels), "layer" one top-level module each (11). Level 1 randomises the last group (the head), level 2 the last two,
and so on until the last level randomises every parameter.

Randomising a module re-draws all of its variables, parameters and batch statistics alike (BatchNorm's running mean
and variance go back to 0 and 1), from the model's own initialiser with another seed (`init_fn(key)`): each layer gets
random weights of the scale it was initialised with, and the statistics that fit them.

Similarity, per image and AU, of the heatmap h of the trained model and h' of a randomised one (`similarity`):
    spearman  Spearman rank correlation of |h| and |h'| over the pixels (average ranks for ties)
    ssim      SSIM (Wang et al. 2004) of |h| / max|h| and |h'| / max|h'| as scikit-image's `structural_similarity`
              computes it by default (7x7 uniform windows, K1 = 0.01, K2 = 0.03, data range 1, sample covariance,
              the mean over the windows that lie inside the image)
Undefined (and left out of every mean) where a heatmap is constant (rank correlation) or zero (SSIM). Every image and AU
counts, not only the correctly predicted ones: a randomised model predicts nothing correctly.

A composite is flagged (`flagged`) when its heatmaps of the fully randomised model keep a mean rank correlation or
SSIM of at least `threshold` with the trained model's: they show the image more than the model.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aujax import distributed
from aujax.data import records as records_lib
from aujax.progress import Progress

GRANULARITIES = ("stage", "layer")
METRICS = ("spearman", "ssim")
SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
RANDOMISATION = ("each level's modules (params and batch statistics) re-drawn from the model's own initialiser with "
                 "another seed, cumulatively from the head down")


def cascade_levels(modules: Sequence[str], granularity: str) -> list[tuple[str, tuple[str, ...]]]:
    """[(label, modules randomised at this level)] from the head down, cumulative: the last entry holds every module.

    modules: top-level parameter modules in the model's order (stem first); granularity: one of `GRANULARITIES`."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"--config.analysis.sanity_granularity={granularity!r}: expected one of "
                         f"{', '.join(GRANULARITIES)}")
    groups: list[tuple[str, list[str]]] = []
    for name in modules:
        label = name.split("_", 1)[0] if granularity == "stage" else name
        if groups and groups[-1][0] == label:
            groups[-1][1].append(name)
        else:
            groups.append((label, [name]))
    levels, randomised = [], []
    for label, members in reversed(groups):
        randomised = members + randomised
        levels.append((label, tuple(randomised)))
    return levels


def randomised(variables: dict, fresh: dict, modules: Sequence[str]) -> dict:
    """`variables` with every collection's entries of `modules` taken from `fresh` (a fresh init of the same model)."""
    return {collection: {**tree, **{m: fresh[collection][m] for m in modules if m in tree}}
            for collection, tree in variables.items()}


def _average_ranks(values) -> jax.Array:
    """(P,) -> (P,) float32 ranks from 0, tied values sharing their mean rank: one sort, each run of equal values
    found by a running max of its first position and a reverse running min of its last (no binary search, whose
    unrolled form XLA spends seconds constant-folding at 112x112)."""
    order = jnp.argsort(values)
    ordered = values[order]
    position = jnp.arange(values.size)
    starts = jnp.concatenate([jnp.ones(1, bool), ordered[1:] != ordered[:-1]])
    ends = jnp.concatenate([starts[1:], jnp.ones(1, bool)])
    first = jax.lax.cummax(jnp.where(starts, position, 0))
    last = jax.lax.cummin(jnp.where(ends, position, values.size), reverse=True)
    return jnp.zeros(values.size, jnp.float32).at[order].set((first + last).astype(jnp.float32) / 2)


def _unit_ranks(values) -> tuple[jax.Array, jax.Array]:
    """(P,) -> the average ranks centred and scaled to unit length (0 where all values are equal), and whether not."""
    ranks = _average_ranks(values)
    ranks = ranks - ranks.mean()
    norm = jnp.sqrt(jnp.sum(ranks * ranks))
    return jnp.where(norm > 0, ranks / jnp.where(norm > 0, norm, 1.0), 0.0), norm > 0


def spearman(a, b) -> tuple[jax.Array, jax.Array]:
    """Spearman rank correlation of two (P,) arrays and whether it is defined (neither constant)."""
    (ra, defined_a), (rb, defined_b) = _unit_ranks(a), _unit_ranks(b)
    return jnp.sum(ra * rb), defined_a & defined_b


def _window_mean(x) -> jax.Array:
    """(h, w) -> (h - 6, w - 6): the mean of every 7x7 window inside the image."""
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (SSIM_WINDOW, SSIM_WINDOW), (1, 1), "VALID")
    return total / SSIM_WINDOW ** 2


def ssim(x, y, data_range: float = 1.0) -> jax.Array:
    """Mean structural similarity of two (h, w) float images, as skimage.metrics.structural_similarity(x, y,
    data_range=data_range) with its defaults."""
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    covariance_norm = SSIM_WINDOW ** 2 / (SSIM_WINDOW ** 2 - 1)  # sample covariance
    ux, uy = _window_mean(x), _window_mean(y)
    vx = covariance_norm * (_window_mean(x * x) - ux * ux)
    vy = covariance_norm * (_window_mean(y * y) - uy * uy)
    vxy = covariance_norm * (_window_mean(x * y) - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s)


class Prepared(NamedTuple):
    """Pixel heatmaps (..., n, h, w) ready to compare (`prepare`): `ranks` (..., n, h·w) the unit rank vectors of |h|
    (`_unit_ranks`), `scaled` (..., n, h, w) |h| / max |h|, and where each is defined (..., n) bool."""

    ranks: jax.Array
    ranked: jax.Array
    scaled: jax.Array
    peaked: jax.Array


def prepare(heatmaps) -> Prepared:
    """`Prepared` of (..., n, h, w) pixel heatmaps (jittable): the sort happens once per heatmap, not per pair."""
    shape = heatmaps.shape
    magnitude = jnp.abs(heatmaps.astype(jnp.float32)).reshape((-1,) + shape[-2:])
    ranks, ranked = jax.vmap(lambda m: _unit_ranks(m.ravel()))(magnitude)
    peak = jnp.max(magnitude, axis=(1, 2))
    peaked = (peak > 0) & jnp.isfinite(peak)
    scaled = magnitude / jnp.where(peaked, peak, 1.0)[:, None, None]
    return Prepared(ranks.reshape(shape[:-2] + (-1,)), ranked.reshape(shape[:-2]), scaled.reshape(shape),
                    peaked.reshape(shape[:-2]))


def similarity(reference: Prepared, heatmaps: Prepared) -> dict:
    """{"spearman", "ssim": (..., n) float32, "spearman_defined", "ssim_defined": (..., n) bool} of two `Prepared`
    heatmap arrays of one shape, pair by pair (jittable); 0 where undefined."""
    shape = reference.scaled.shape
    rank_defined = reference.ranked & heatmaps.ranked
    ssim_defined = reference.peaked & heatmaps.peaked
    structural = jax.vmap(ssim)(reference.scaled.reshape((-1,) + shape[-2:]),
                                heatmaps.scaled.reshape((-1,) + shape[-2:])).reshape(shape[:-2])
    return {"spearman": jnp.where(rank_defined, jnp.sum(reference.ranks * heatmaps.ranks, axis=-1), 0.0),
            "spearman_defined": rank_defined, "ssim": jnp.where(ssim_defined, structural, 0.0),
            "ssim_defined": ssim_defined}


@dataclasses.dataclass
class SanityResult:
    """One dataset's randomisation curves: `levels` labels (level k randomises the model from the head down to
    `levels[k]`); `values[metric][composite]` (K, n, A) float and `defined[metric][composite]` (K, n, A) bool."""

    name: str
    aus: tuple[int, ...]
    composites: tuple[str, ...]
    levels: tuple[str, ...]
    values: dict
    defined: dict

    def per_au(self, metric: str, composite: str) -> np.ndarray:
        """(K, A) mean over the images where defined (NaN where none)."""
        used, values = self.defined[metric][composite], self.values[metric][composite]
        count = used.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, np.sum(np.where(used, values, 0.0), axis=1) / count, np.nan)

    def curve(self, metric: str, composite: str) -> list:
        """(K,) mean over every defined (image, AU) pair per level, None where there is none."""
        used, values = self.defined[metric][composite], self.values[metric][composite]
        return [float(np.mean(v[u])) if u.any() else None for v, u in zip(values, used)]

    def flagged(self, threshold: float) -> list[str]:
        """The composites whose fully randomised heatmaps keep a mean similarity of at least `threshold`."""
        return [c for c in self.composites
                if any((last := self.curve(metric, c)[-1]) is not None and last >= threshold for metric in METRICS)]


def randomisation_check(explainer: Callable, variables: dict, init_fn: Callable, records: records_lib.FaceRecords,
                        aus: Sequence[int], *, granularity: str, batch_size: int, mesh: Mesh, key,
                        composites: Sequence[str]) -> SanityResult:
    """Cascading randomisation on every image of `records`, in padded batches split over `mesh`.

    explainer: variables -> a function of (n, 112, 112, 3) float images (a sharded jax array) giving the
    (C, A, n, 112, 112) pixel heatmaps of `composites` (called once per model: canonize there); variables: the
    trained model's {'params', 'batch_stats'}; init_fn: PRNG key -> fresh variables of the same model, its modules in
    definition order; key: the PRNG key of the random parameters.
    """
    fresh = init_fn(key)
    levels = cascade_levels(list(fresh["params"]), granularity)  # before any tree_map, which sorts the names
    # Trained and fresh parameters alike replicated over the mesh (as a restored checkpoint is), so that every mixture
    # of the two has the same placement and the explainers compile once for all levels.
    place = jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, P()))
    variables, fresh = place(variables), place(jax.device_get(fresh))
    reference_fn = explainer(variables)
    heatmap_fns = [explainer(randomised(variables, fresh, modules)) for _, modules in levels]
    prepare_fn = jax.jit(prepare)
    compare = jax.jit(lambda reference, heatmaps: similarity(reference, prepare(heatmaps)),
                      out_shardings=NamedSharding(mesh, P()))
    parts = []
    with Progress(len(records), f"randomisation {records.name}") as progress:
        for index, valid in records_lib.padded_batches(np.arange(len(records)), batch_size):
            images, _ = distributed.put_rows(records.image, index, mesh)
            images = images.astype(jnp.float32) / 255.0
            reference = prepare_fn(reference_fn(images))
            batch = [jax.device_get(compare(reference, fn(images))) for fn in heatmap_fns]  # K × (C, A, n)
            parts.append({k: np.stack([b[k] for b in batch])[..., :valid] for k in batch[0]})
            progress.advance(valid)
    joined = {k: np.concatenate([p[k] for p in parts], axis=-1).transpose(1, 0, 3, 2) for k in parts[0]}  # C, K, n, A
    return SanityResult(records.name, tuple(aus), tuple(composites), tuple(label for label, _ in levels),
                        {m: dict(zip(composites, joined[m])) for m in METRICS},
                        {m: dict(zip(composites, joined[f"{m}_defined"])) for m in METRICS})


def table_rows(result: SanityResult) -> list[dict]:
    """`report.write_table` rows (keys `METRICS`): one per composite and level, per AU the mean over the images."""
    rows = []
    for composite in result.composites:
        per_au = {metric: result.per_au(metric, composite) for metric in METRICS}
        for k, level in enumerate(result.levels):
            scores = {}
            for a, au in enumerate(result.aus):
                values = {m: (None if np.isnan(per_au[m][k, a]) else float(per_au[m][k, a])) for m in METRICS}
                scores[f"AU{au}"] = {**values, "reason": "" if None not in values.values()
                                     else "constant or empty heatmaps"}
            rows.append({"method": f"{result.name} {composite}, randomised down to {level}", "scores": scores})
    return rows


def summary(result: SanityResult, threshold: float) -> dict:
    """JSON-ready: the levels, each composite's curves (mean over all pairs) and the flagged composites."""
    return {
            "dataset": result.name,
            "levels": list(result.levels),
            "curves": {c: {m: result.curve(m, c) for m in METRICS} for c in result.composites},
            "threshold": threshold,
            "flagged": result.flagged(threshold),
    }
