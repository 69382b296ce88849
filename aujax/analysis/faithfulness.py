"""Faithfulness: does the model depend on the AU's region, and on the pixels its heatmaps rank first?
(`results/faithfulness.csv|json`)

Fill. A replaced pixel takes its value in a fill image made from the image itself (`fill_images`, `FILLS`):
"blur" the image blurred by a Gaussian of σ = `BLUR_SIGMA` px (weights renormalised at the borders): it keeps colour
and coarse shape and removes the fine structure in which AUs show (furrows, lid and lip edges); "mean" the image's
mean colour, which removes everything.

(a) Region perturbation. For image x and AU a with logit z_a and region G_a (`aujax.regions.au_region_masks`), the
drop of z_a when the pixels S are filled, z_a(x) − z_a(x with S filled), for
    own          S = G_a;
    random       S = the |G_a| pixels of F ∖ G_a nearest to a point drawn uniformly from F ∖ G_a, where F is the
                 face (inside the convex hull of the 68 landmarks, `region_matrix.face_hull_masks`): a disc of
                 G_a's area on the face, clipped by its outline and by G_a (ties in random order). `random_area` =
                 |S| / |G_a| is 1 unless F ∖ G_a is smaller than G_a;
    background   S = every pixel neither on the face nor in any AU region (the region matrix's background).
A model that reads AU a from its region drops far more for the own region than for a random one.

(b) Pixel flipping (Samek et al. 2017, "Evaluating the visualization of what a deep neural network has learned"): the
image is cut into Q square patches of `FLIP_PATCH` px; ordered by AU a's relevance summed over each patch (most
relevant first, MoRF; ties in random order), they are filled in L = `steps` equal portions until `max_fraction` of
them are: x⁽ᵏ⁾ has the first round(k/L · max_fraction · Q) patches filled.
    curve  z_a(x⁽ᵏ⁾), k = 0 .. L;        AOPC = 1/(L+1) Σ_{k=0}^{L} (z_a(x⁽⁰⁾) − z_a(x⁽ᵏ⁾))   (logit units)
The baseline is the same with a uniformly random order (one per image, for all its AUs): a composite whose AOPC
exceeds it ranks first pixels the model depends on; the larger, the more.

One jitted function per batch (`perturbation_logits`) covers all AUs of an image at once: the region perturbations
are 3 sets of A images per image, pixel flipping L sets per composite and L for the random order; `jax.lax.map` runs
one set at a time through one forward pass, so memory stays at A images per image. Every (image, AU) pair is computed;
summaries average the correctly predicted AUs (label 1 and prediction 1), those μ counts.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aujax import distributed, regions
from aujax.analysis import region_matrix
from aujax.data import records as records_lib
from aujax.progress import Progress

FILLS = ("blur", "mean")
BLUR_SIGMA = 4.0  # px: wider than a furrow or a lid edge at 112x112, narrower than a feature
FLIP_PATCH = 8  # px: pixel flipping fills square patches (Samek et al. 2017 fill 9x9 regions of 224x224 images)
REGION_SETS = ("own", "random", "background")
RANDOM_ORDER = "random order"


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32: row i holds the Gaussian weights of the pixels around i, truncated at 3σ, summing to 1."""
    distance = np.arange(size)[:, None] - np.arange(size)[None, :]
    weights = np.where(np.abs(distance) <= 3 * sigma, np.exp(-0.5 * (distance / sigma) ** 2), 0.0)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def fill_images(images, fill: str) -> jax.Array:
    """The fill of each image: (n, h, w, 3) float -> (n, h, w, 3), blurred ("blur") or its mean colour ("mean")."""
    if fill == "mean":
        return jnp.broadcast_to(jnp.mean(images, axis=(1, 2), keepdims=True), images.shape)
    if fill == "blur":
        rows, cols = _gaussian_matrix(images.shape[1], BLUR_SIGMA), _gaussian_matrix(images.shape[2], BLUR_SIGMA)
        return jnp.einsum("ij,njkc,lk->nilc", rows, images, cols)
    raise ValueError(f"fill={fill!r}: expected one of {', '.join(FILLS)}")


def _random_region(mask, face, key) -> jax.Array:
    """One AU's random face region (see the module docstring): (h, w) bool mask and face -> (h, w) bool."""
    h, w = mask.shape
    available = (face & ~mask).ravel()
    centre_key, tie_key = jax.random.split(key)
    centre = jax.random.categorical(centre_key, jnp.where(jnp.any(available) & ~available, -jnp.inf, 0.0))
    ys, xs = jnp.mgrid[:h, :w]
    # Squared distances are integers: a uniform draw in [0, 1) breaks their ties without reordering them.
    distance = ((ys - centre // w) ** 2 + (xs - centre % w) ** 2).ravel() + jax.random.uniform(tie_key, (h * w,))
    distance = jnp.where(available, distance, jnp.inf)
    area = jnp.sum(mask)
    cutoff = jnp.sort(distance)[jnp.clip(area - 1, 0, h * w - 1)]
    return ((distance <= cutoff) & available & (area > 0)).reshape(h, w)


def random_regions(masks, face, key) -> jax.Array:
    """The random face region of every image and AU: masks (n, A, h, w) bool, face (n, h, w) bool -> (n, A, h, w)."""
    n, num_aus = masks.shape[:2]
    keys = jax.random.split(key, n * num_aus).reshape(n, num_aus, -1)
    per_image = jax.vmap(_random_region, (0, None, 0))
    return jax.vmap(per_image)(masks, face, keys)


def _descending_ranks(values, key) -> jax.Array:
    """(..., P) float -> (..., P) int32: each entry's place when sorted from largest (0) down, ties in random order."""
    noise = jax.random.uniform(key, values.shape)
    order = jnp.lexsort((noise, -values), axis=-1)
    return jnp.argsort(order, axis=-1).astype(jnp.int32)


def flip_counts(num_patches: int, steps: int, max_fraction: float) -> np.ndarray:
    """(steps + 1,) int: patches filled at each step of the curve, 0 first."""
    return np.round(np.arange(steps + 1) / steps * max_fraction * num_patches).astype(np.int32)


def _patches(size: int) -> int:
    if size % FLIP_PATCH:
        raise ValueError(f"pixel flipping: images of {size} pixels are not a whole number of {FLIP_PATCH}-pixel "
                         "patches")
    return size // FLIP_PATCH


class PerturbationLogits(NamedTuple):
    """One batch's logits (n images, A AUs, C composites, L steps), each AU a's own logit z_a:

    logits (n, A) of the images; regions (3, n, A) with `REGION_SETS` filled; random_area (n, A); curves
    (C, L + 1, n, A) pixel flipping, most relevant first; random_curve (L + 1, n, A) in random order."""

    logits: jax.Array
    regions: jax.Array
    random_area: jax.Array
    curves: jax.Array
    random_curve: jax.Array


def perturbation_logits(logits_fn: Callable, images, masks, face, heatmaps, key, *, steps: int,
                        max_fraction: float, fill: str) -> PerturbationLogits:
    """Region perturbation and pixel flipping of one batch (jittable).

    logits_fn: traceable (m, h, w, 3) float -> (m, A) logits, AUs in the order of `masks`; images: (n, h, w, 3)
    float in [0, 1], h and w multiples of `FLIP_PATCH`; masks: (n, A, h, w) bool AU regions; face: (n, h, w) bool;
    heatmaps: (C, A, n, h, w) pixel heatmaps of C composites; key: a PRNG key (random regions, random order, ties).
    """
    n, num_aus, h, w = masks.shape
    num_composites = heatmaps.shape[0]
    rows, cols = _patches(h), _patches(w)
    region_key, order_key, tie_key = jax.random.split(key, 3)
    moved = random_regions(masks, face, region_key)
    background = jnp.broadcast_to((~face & ~jnp.any(masks, axis=1))[:, None], masks.shape)

    counts = jnp.asarray(flip_counts(rows * cols, steps, max_fraction)[1:])
    patch_relevance = heatmaps.reshape(num_composites, num_aus, n, rows, FLIP_PATCH, cols, FLIP_PATCH).sum((4, 6))
    ranks = _descending_ranks(patch_relevance.reshape(num_composites, num_aus, n, rows * cols), tie_key)
    ranks = jnp.concatenate([ranks.transpose(0, 2, 1, 3),  # (C + 1, n, A, patches): the composites, random order
                             jnp.broadcast_to(_descending_ranks(jax.random.uniform(order_key, (n, 1, rows * cols)),
                                                                order_key), (1, n, num_aus, rows * cols))])
    flips = (ranks[:, None] < counts[None, :, None, None, None]).reshape(-1, n, num_aus, rows, 1, cols, 1)
    flips = jnp.broadcast_to(flips, flips.shape[:4] + (FLIP_PATCH, cols, FLIP_PATCH)).reshape(-1, n, num_aus, h, w)

    filled = fill_images(images, fill)

    def own_logits(replace):  # (n, A, h, w) bool -> (n, A): AU a's logit with replace[:, a] filled
        x = jnp.where(replace[..., None], filled[:, None], images[:, None])
        z = logits_fn(x.reshape(n * num_aus, h, w, 3)).reshape(n, num_aus, num_aus)
        return jnp.diagonal(z, axis1=1, axis2=2)

    # One forward pass per set of A images per image: 3 region sets, then (C + 1) x L flipping steps.
    perturbed = jax.lax.map(own_logits, jnp.concatenate([jnp.stack([masks, moved, background]), flips]))
    logits = logits_fn(images)
    curves = jnp.concatenate([jnp.broadcast_to(logits, (num_composites + 1, 1, n, num_aus)),
                              perturbed[3:].reshape(num_composites + 1, steps, n, num_aus)], axis=1)
    random_area = jnp.sum(moved, axis=(2, 3)) / jnp.maximum(jnp.sum(masks, axis=(2, 3)), 1)
    return PerturbationLogits(logits, perturbed[:3], random_area, curves[:-1], curves[-1])


@functools.lru_cache(maxsize=None)
def _batch_fn(logits_fn, aus: tuple[int, ...], steps: int, max_fraction: float, fill: str, mesh: Mesh | None):
    """jitted `(params, images uint8 (n,h,w,3), landmarks (n,68,2), heatmaps (C,A,n,h,w), key) ->
    PerturbationLogits`, replicated over `mesh`."""

    def run(params, images, landmarks, heatmaps, key):
        masks = regions.au_region_masks(landmarks, aus=aus, size=images.shape[1])
        face = region_matrix.face_hull_masks(landmarks, size=images.shape[1])
        return perturbation_logits(functools.partial(logits_fn, params), images.astype(jnp.float32) / 255.0, masks,
                                   face, heatmaps, key, steps=steps, max_fraction=max_fraction, fill=fill)

    return jax.jit(run, out_shardings=None if mesh is None else NamedSharding(mesh, P()))


def aopc(curves) -> np.ndarray:
    """Area over the perturbation curve: (..., L + 1, n, A) logits -> (..., n, A), mean over k of z⁽⁰⁾ − z⁽ᵏ⁾."""
    curves = np.asarray(curves, np.float64)
    return np.mean(curves[..., :1, :, :] - curves, axis=-3)


@dataclasses.dataclass
class Faithfulness:
    """One dataset's faithfulness, numpy, for n images and the A AUs of `aus`.

    logits (n, A); drops {"own" | "random" | "background": (n, A)} logit drops; random_area (n, A); fractions (L + 1,)
    share of the image filled at each step; curves {composite: (L + 1, n, A)} most relevant first; random_curve
    (L + 1, n, A); selected (n, A) bool, the correctly predicted AUs that the summaries average.
    """

    name: str
    aus: tuple[int, ...]
    fill: str
    logits: np.ndarray
    drops: dict
    random_area: np.ndarray
    fractions: np.ndarray
    curves: dict
    random_curve: np.ndarray
    selected: np.ndarray

    def mean_per_au(self, values) -> np.ndarray:
        """(n, A) -> (A,) mean over the selected images of each AU (NaN where none)."""
        used = self.selected
        count = used.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, np.sum(np.where(used, values, 0.0), axis=0) / count, np.nan)

    def mean_curve(self, curve) -> np.ndarray:
        """(L + 1, n, A) -> (L + 1,) mean logit over every selected pair."""
        return np.array([np.mean(step[self.selected]) if self.selected.any() else np.nan for step in curve])

    def aopc_per_au(self) -> dict:
        """{composite or `RANDOM_ORDER`: (A,) mean AOPC per AU}."""
        return {**{c: self.mean_per_au(aopc(curve)) for c, curve in self.curves.items()},
                RANDOM_ORDER: self.mean_per_au(aopc(self.random_curve))}

    def aopc_overall(self) -> dict:
        """{composite or `RANDOM_ORDER`: mean AOPC over every selected pair}."""
        curves = {**self.curves, RANDOM_ORDER: self.random_curve}
        return {c: float(np.mean(aopc(curve)[self.selected])) if self.selected.any() else None
                for c, curve in curves.items()}


def faithfulness(logits_fn: Callable, params, heatmaps_fn: Callable, records: records_lib.FaceRecords, selected,
                 aus: Sequence[int], *, steps: int, max_fraction: float, fill: str, batch_size: int, mesh: Mesh,
                 key, composites: Sequence[str]) -> Faithfulness:
    """Region perturbation and pixel flipping of every image of `records`, in padded batches split over `mesh`.

    logits_fn: traceable (params, (m, 112, 112, 3) float in [0, 1]) -> (m, A) logits (the same object on every call,
    so that the compiled batch function is reused), e.g. a Flax model's apply; params: its first argument (a pytree,
    passed to the compiled function rather than baked into it); heatmaps_fn: (n, 112, 112, 3) float images (a sharded
    jax array) -> (C, A, n, 112, 112) pixel heatmaps of `composites`; selected: (len(records), A) bool, the pairs
    to average; key: a PRNG key, folded in with the batch number.
    """
    if fill not in FILLS:
        raise ValueError(f"--config.analysis.fill={fill!r}: expected one of {', '.join(FILLS)}")
    if steps < 1 or not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"pixel flipping with steps={steps}, max_fraction={max_fraction}: expected steps >= 1 and "
                         "0 < max_fraction <= 1")
    fn = _batch_fn(logits_fn, tuple(aus), steps, float(max_fraction), fill, mesh)
    parts = []
    with Progress(len(records), f"faithfulness {records.name}") as progress:
        for number, (index, valid) in enumerate(records_lib.padded_batches(np.arange(len(records)), batch_size)):
            (images, _), (landmarks, _) = (distributed.put_rows(column, index, mesh)
                                           for column in (records.image, records.landmarks))
            heatmaps = heatmaps_fn(images.astype(jnp.float32) / 255.0)
            out = jax.device_get(fn(params, images, landmarks, heatmaps, jax.random.fold_in(key, number)))
            parts.append(_cut(PerturbationLogits(*map(np.asarray, out)), valid))
            progress.advance(valid)
    joined = PerturbationLogits(*(np.concatenate(arrays, axis=axis) for arrays, axis in
                                  zip(zip(*parts), (0, 1, 0, 2, 1))))
    h, w = records.image.shape[1:3]
    return Faithfulness(
            records.name, tuple(aus), fill, joined.logits,
            {name: joined.logits - joined.regions[i] for i, name in enumerate(REGION_SETS)}, joined.random_area,
            flip_counts(_patches(h) * _patches(w), steps, max_fraction) / (_patches(h) * _patches(w)),
            {c: joined.curves[i] for i, c in enumerate(composites)}, joined.random_curve,
            np.asarray(selected, bool))


def _cut(out: PerturbationLogits, valid: int) -> PerturbationLogits:
    """The first `valid` images of a padded batch."""
    return PerturbationLogits(out.logits[:valid], out.regions[:, :valid], out.random_area[:valid],
                              out.curves[:, :, :valid], out.random_curve[:, :valid])


def table_rows(result: Faithfulness) -> list[dict]:
    """`report.write_table` rows (key "value") of one dataset: the logit drops per region set, the random region's
    area share and n, then the AOPC of every composite and of the random order."""
    def row(method, values, integer=False):
        scores = {}
        for a, au in enumerate(result.aus):
            value = values[a]
            missing = not np.isfinite(value) if not integer else False
            scores[f"AU{au}"] = {"value": None if missing else (int(value) if integer else float(value)),
                                 "reason": "no correctly predicted AU" if missing else ""}
        return {"method": f"{result.name} {method}", "scores": scores}

    rows = [row(f"logit drop, {name} region" if name != "background" else "logit drop, background",
                result.mean_per_au(result.drops[name])) for name in REGION_SETS]
    rows.append(row("random region area / own", result.mean_per_au(result.random_area)))
    rows.append(row("n (correctly predicted)", result.selected.sum(axis=0), integer=True))
    rows += [row(f"AOPC, {c}", values) for c, values in result.aopc_per_au().items()]
    return rows


def summary(result: Faithfulness) -> dict:
    """JSON-ready: the mean curves per composite and of the random order, AOPC over all pairs, mean drops."""
    overall = result.aopc_overall()
    return {
            "dataset": result.name,
            "fill": result.fill,
            "fractions": result.fractions.tolist(),
            "n_pairs": int(result.selected.sum()),
            "mean_curves": {c: result.mean_curve(curve).tolist() if result.selected.any() else None
                            for c, curve in {**result.curves, RANDOM_ORDER: result.random_curve}.items()},
            "aopc": overall,
            "beats_random_order": {c: (value is not None and overall[RANDOM_ORDER] is not None
                                       and value > overall[RANDOM_ORDER])
                                   for c, value in overall.items() if c != RANDOM_ORDER},
            "mean_drop": {name: (float(np.mean(result.drops[name][result.selected])) if result.selected.any()
                                 else None) for name in REGION_SETS},
    }
