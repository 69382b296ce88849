"""Explain stage: explain a model on the datasets of every role under every composite, score every heatmap with the AU
regions (μ and the other localisation metrics), and the heatmaps of the figures' examples; results, no files
(`report.write_explained` and `figures.write_explained` write them).

For each composite (`config.explain.composite` first, the main one; then `config.explain.compare`) and each role, the
first `config.explain.max_images` images are explained in batches split over all devices of all hosts; one jitted
function per batch runs the forward pass, the LRP backward pass for every AU of the records' AU set (`au_ids`, the
model's outputs in that order), the region masks and the metrics, so heatmaps never leave the device. μ counts only
correctly predicted AUs (label 1 and prediction 1), as in the paper.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aujax import distributed, localisation, lrp, metrics, regions
from aujax.analysis import region_matrix, strategies
from aujax.data import records as records_lib
from aujax.progress import Progress


@functools.lru_cache(maxsize=None)
def explain_and_score_fn(composite: str, epsilon: float, aus: tuple[int, ...],
                         metrics: tuple[str, ...] = localisation.METRIC_NAMES, mesh: Mesh | None = None,
                         strategy_size: int = 0, dtype: str = "float32"):
    """jitted `(canonical, images uint8 (b,112,112,3), landmarks (b,68,2)) -> (probabilities (b,A), scores, shares,
    small heatmaps)` of a model whose A outputs are the AUs `aus`: scores hold the localisation `metrics` ((b, A)
    each), shares the relevance-region matrix's entries (`region_matrix.RegionShares`), small heatmaps the pixel
    heatmaps summed to (A, b, strategy_size, strategy_size) for the strategies (None where `strategy_size` is 0); with
    `mesh`, the outputs are replicated over it (so that every process can read them whatever the inputs' sharding);
    the LRP convolutions compute in `dtype` (config.explain.dtype)."""
    explain_fn = lrp.make_explain_fn(composite, epsilon, dtype)

    def explain_and_score(canonical, images, landmarks):
        logits, relevance = explain_fn(canonical, images.astype(jnp.float32) / 255.0)
        heatmaps, masks = lrp.pixel_heatmaps(relevance), regions.au_region_masks(landmarks, aus=aus)
        scores = localisation.localisation_metrics(heatmaps, masks, names=metrics)
        shares = region_matrix.region_shares(heatmaps, masks,
                                             region_matrix.face_hull_masks(landmarks, heatmaps.shape[-1]))
        small = strategies.downsample(heatmaps, strategy_size) if strategy_size else None
        return jax.nn.sigmoid(logits), scores, shares, small

    return jax.jit(explain_and_score, out_shardings=None if mesh is None else NamedSharding(mesh, P()))


def explain_records(canonical: dict, records: records_lib.FaceRecords, composites: tuple[str, ...], epsilon: float,
                    batch_size: int, mesh: Mesh, metrics: tuple[str, ...] = localisation.METRIC_NAMES,
                    strategy_size: int = 0, dtype: str = "float32") -> dict[str, tuple]:
    """{composite: (probabilities (n, A), localisation scores ((n, A) per metric), `region_matrix.RegionShares`,
    small heatmaps (A, n, strategy_size, strategy_size) or None)} of every image of `records`, as numpy, for the A AUs
    of `records.au_ids` (the model's outputs, in that order); the small heatmaps (for the strategies) of the first
    composite only.

    Each batch is split over the devices of `mesh` (data parallel; `batch_size` a multiple of their number); each
    process reads only the images and landmarks of its own devices, once per batch for all `composites`. Batches come
    from `records.padded_batches`, so one compiled function per composite serves all of them.
    """
    fns = {c: explain_and_score_fn(c, epsilon, records.au_ids, metrics, mesh,
                                   strategy_size if c == composites[0] else 0, dtype) for c in composites}
    parts, read = {c: [] for c in composites}, 0
    with Progress(len(records), f"explain {records.name}") as progress:
        for index, valid in records_lib.padded_batches(np.arange(len(records)), batch_size):
            (images, held), (landmarks, _) = (distributed.put_rows(column, index, mesh)
                                              for column in (records.image, records.landmarks))
            read += held
            for composite, fn in fns.items():
                prob, scores, shares, small = jax.tree_util.tree_map(np.asarray, fn(canonical, images, landmarks))
                parts[composite].append((prob[:valid], jax.tree_util.tree_map(lambda a: a[:valid], (scores, shares)),
                                         None if small is None else small[:, :valid]))
            progress.advance(valid)
    logging.info("%s: process %d read %d of %d images", records.name, jax.process_index(), read, len(records))
    return {c: _concatenate(parts[c], len(records.au_ids), metrics) for c in composites}


def _concatenate(parts: list, num_aus: int, metrics: tuple[str, ...]) -> tuple:
    """The outputs of consecutive batches, `[(probabilities, (scores, shares), small)]`, as one of each."""
    scores = localisation.concatenate_scores([scores for _, (scores, _), _ in parts], num_aus, metrics)
    shares = region_matrix.RegionShares(*(np.concatenate(field) for field in zip(*(s for _, (_, s), _ in parts))))
    small = None if parts[0][2] is None else np.concatenate([small for _, _, small in parts], axis=1)
    return np.concatenate([prob for prob, _, _ in parts]), scores, shares, small


@dataclasses.dataclass
class RoleResult:
    """One role's explained subset under one composite.

    records: the n explained images (their `au_ids`, A AUs, are the columns below); probabilities: (n, A); scores:
    localisation scores, (n, A) per metric; predictions: (n, A) bool; selected: (n, A) bool, the correctly predicted
    AUs (those μ counts); summaries: {metric: tuple of A `localisation.AUSummary`} over the selected, defined pairs;
    shares: the relevance-region matrix's entries per pair (`region_matrix.RegionShares`); small_heatmaps: (A, n, s, s)
    heatmaps for the strategies (main composite only, else None).
    """

    records: records_lib.FaceRecords
    probabilities: np.ndarray
    scores: localisation.LocalisationScores
    predictions: np.ndarray
    selected: np.ndarray
    summaries: dict
    shares: region_matrix.RegionShares | None = None
    small_heatmaps: np.ndarray | None = None

    @classmethod
    def of(cls, records, probabilities, scores, threshold: float, shares=None, small_heatmaps=None) -> "RoleResult":
        predictions = metrics.decisions(probabilities, threshold)
        selected = localisation.correct_positives(records.labels, predictions)
        return cls(records, probabilities, scores, predictions, selected,
                   localisation.summarise_scores(scores, selected, records.au_ids), shares, small_heatmaps)

    @property
    def used(self) -> np.ndarray:
        """(n, A) bool: the pairs μ averages (correctly predicted, μ defined)."""
        return self.selected & self.scores.defined["mu"]


@dataclasses.dataclass
class Explained:
    """Every role under every composite: `results[composite, role]`; `composites[0]` is the main one."""

    composites: tuple[str, ...]
    roles: tuple[str, ...]
    results: dict

    @property
    def main(self) -> dict[str, RoleResult]:
        """{role: result under the main composite}."""
        return {role: self.results[self.composites[0], role] for role in self.roles}


def composites_of(cfg) -> tuple[str, ...]:
    """The main composite, then the compared ones (without repeating it)."""
    return (cfg.composite, *[c for c in cfg.compare if c != cfg.composite])


def explain_roles(canonical: dict, roles: dict, cfg, threshold: float, strategy_size: int = 0) -> Explained:
    """Explain and score the first `cfg.max_images` images of every role under every composite of `cfg`
    (`config.explain`) with the canonized model `canonical`, on every process; with `strategy_size`, the main
    composite's heatmaps downsampled to that size too (`config.analysis.strategy_size`)."""
    mesh = distributed.make_mesh()
    composites = composites_of(cfg)
    results = {}
    for role, records in roles.items():
        subset = records.select(np.arange(min(len(records), cfg.max_images or len(records))))
        logging.info("explaining %s (%s role, %d images) with %s", records.name, role, len(subset),
                     ", ".join(composites))
        explained = explain_records(canonical, subset, composites, cfg.epsilon, cfg.batch_size, mesh,
                                    tuple(cfg.metrics), strategy_size, cfg.dtype)
        for composite, outputs in explained.items():
            results[composite, role] = RoleResult.of(subset, *outputs[:2], threshold, *outputs[2:])
    return Explained(composites, tuple(roles), results)


def pixel_heatmaps_of(canonical, images: np.ndarray, cfg) -> np.ndarray:
    """(A, k, 112, 112) pixel heatmaps (A: the model's outputs) of k uint8 images under the main composite, in
    padded batches of `cfg.batch_size` so that one compiled function serves every call."""
    explain_fn = lrp.make_explain_fn(cfg.composite, cfg.epsilon, cfg.dtype)
    parts = []
    for index, valid in records_lib.padded_batches(np.arange(len(images)), cfg.batch_size):
        _, relevance = explain_fn(canonical, jnp.asarray(images[index], jnp.float32) / 255)
        parts.append(np.asarray(lrp.pixel_heatmaps(relevance))[:, :valid])
    return np.concatenate(parts, axis=1)


@dataclasses.dataclass
class Figure2Examples:
    """One AU's Figure 2: `index` (k,) into the role's records, sorted by μ; heatmaps (k, 112, 112); mu (k,)."""

    au: int
    index: np.ndarray
    heatmaps: np.ndarray
    mu: np.ndarray


@dataclasses.dataclass
class HeatmapGrid:
    """The first k images of a role: heatmaps (A, k, 112, 112) of the AUs `au_ids`, images (k, 112, 112, 3) uint8, a
    title each."""

    heatmaps: np.ndarray
    images: np.ndarray
    titles: list[str]
    au_ids: tuple[int, ...]


def figure2_examples(canonical, result: RoleResult, cfg) -> list[Figure2Examples]:
    """Per AU: the `cfg.examples_per_panel` lowest and highest μ among correctly predicted, defined pairs (AUs
    without such a pair are left out)."""
    mu = result.scores.values["mu"]
    chosen = {}
    for j, au in enumerate(result.records.au_ids):
        usable = np.flatnonzero(result.selected[:, j] & result.scores.defined["mu"][:, j])
        if not len(usable):
            logging.info("figure 2: no correctly predicted AU%d to show", au)
            continue
        order = usable[np.argsort(mu[usable, j], kind="stable")]
        picked = np.unique(np.concatenate([order[: cfg.examples_per_panel], order[-cfg.examples_per_panel:]]))
        chosen[j] = picked[np.argsort(mu[picked, j], kind="stable")]
    if not chosen:
        return []
    needed = np.unique(np.concatenate(list(chosen.values())))
    heatmaps = pixel_heatmaps_of(canonical, result.records.image[needed], cfg)
    return [Figure2Examples(result.records.au_ids[j], picked, heatmaps[j, np.searchsorted(needed, picked)],
                            mu[picked, j]) for j, picked in chosen.items()]


def heatmap_grid(canonical, records: records_lib.FaceRecords, cfg) -> HeatmapGrid:
    """The heatmaps of the first `cfg.grid_images` images, titled by subject and labelled AUs."""
    count = min(len(records), cfg.grid_images)
    titles = [f"{records.subject[i]} " + ",".join(str(a) for a, l in zip(records.au_ids, records.labels[i]) if l)
              for i in range(count)]
    return HeatmapGrid(pixel_heatmaps_of(canonical, records.image[:count], cfg), records.image[:count], titles,
                       records.au_ids)


def precision_difference(canonical, images: np.ndarray, landmarks: np.ndarray, aus: tuple[int, ...],
                         composite: str = "paper", epsilon: float = lrp.DEFAULT_EPSILON,
                         dtype: str = "bfloat16") -> dict:
    """What explaining in `dtype` (config.explain.dtype) changes against float32 at matmul precision 'highest'.

    images: uint8 (n, 112, 112, 3); landmarks (n, 68, 2); aus: the A AUs of the canonical network's outputs.
    Returns {'AU<id>': {'relative_l2': ||H_dtype - H_float32||_2 / ||H_float32||_2 over the n pixel heatmaps,
    'mu_float32', 'mu_<dtype>': mean μ, 'mu_abs_difference_mean', 'mu_abs_difference_max': of |μ_dtype - μ_float32|}}
    with μ over the images where both define it (every image, not only correctly predicted AUs: a measure of the
    numerics, not of the model)."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    masks = regions.au_region_masks(jnp.asarray(landmarks), aus=aus)
    with jax.default_matmul_precision("highest"):
        reference = lrp.pixel_heatmaps(lrp.make_explain_fn(composite, epsilon)(canonical, x)[1])
    heatmaps = {"float32": reference,
                dtype: lrp.pixel_heatmaps(lrp.make_explain_fn(composite, epsilon, dtype)(canonical, x)[1])}
    mu = {name: localisation.localisation_metrics(h, masks, names=("mu",)) for name, h in heatmaps.items()}
    defined = np.asarray(mu["float32"].defined["mu"]) & np.asarray(mu[dtype].defined["mu"])  # (n, A)
    reference, other = (np.asarray(heatmaps[name], np.float64) for name in ("float32", dtype))
    report = {}
    for j, au in enumerate(aus):
        used = defined[:, j]
        values = {name: np.asarray(scores.values["mu"], np.float64)[used, j] for name, scores in mu.items()}
        difference = np.abs(values[dtype] - values["float32"])
        report[f"AU{au}"] = {
                "relative_l2": float(np.linalg.norm(other[j] - reference[j]) /
                                     max(np.linalg.norm(reference[j]), np.finfo(np.float32).tiny)),
                "mu_float32": float(values["float32"].mean()) if used.any() else None,
                f"mu_{dtype}": float(values[dtype].mean()) if used.any() else None,
                "mu_abs_difference_mean": float(difference.mean()) if used.any() else None,
                "mu_abs_difference_max": float(difference.max()) if used.any() else None}
    return report
