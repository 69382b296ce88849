"""The analyses' figures: the relevance-region matrix as an image, the SpRAy strategies of a role (each cluster's mean
heatmap and its most typical faces). Builders return a matplotlib `Figure`; `write_figures` writes them under
`results/figures/` (names from `aujax.rundir`).
"""

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from aujax import figures, rundir
from aujax.analysis import region_matrix, strategies as strategies_lib
from aujax.lrp import heatmaps as lrp_heatmaps

EXAMPLES_PER_CLUSTER = 4


def region_matrix_figure(matrices: dict) -> Figure:
    """One panel per {title: `region_matrix.RegionMatrix`}: rows the explained AUs, columns every AU's region, the
    rest of the face and the background (`any region` left out: it is 1 − rest − background); each cell the mean share
    of the row AU's positive relevance, own region outlined, rows flagged by `region_matrix.shortcuts` marked ◀."""
    if not matrices:
        raise ValueError("region_matrix_figure: no matrices")
    first = next(iter(matrices.values()))
    names = region_matrix.columns(first.aus)
    shown = [i for i, name in enumerate(names) if name != region_matrix.ANY_REGION]
    figure = Figure(figsize=(0.55 * len(shown) * len(matrices) + 2.0, 0.45 * len(first.aus) + 2.2),
                    layout="constrained")
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (title, matrix) in zip(axes, matrices.items()):
        values = matrix.matrix[:, shown]
        image = ax.imshow(np.nan_to_num(values, nan=0.0), cmap="Greens", norm=Normalize(0.0, 1.0), aspect="auto")
        flagged = {s.au for s in region_matrix.shortcuts(matrix)}
        for r, au in enumerate(matrix.aus):
            for c in range(len(shown)):
                text = "" if np.isnan(values[r, c]) else f"{values[r, c]:.2f}"
                ax.text(c, r, text, ha="center", va="center", fontsize=6.5,
                        color="white" if values[r, c] > 0.6 else "black")
            ax.add_patch(_cell_outline(r, r))
        ax.set_xticks(range(len(shown)), [names[i] for i in shown], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(matrix.aus)), [f"AU{au} (n={n}){' ◀' if au in flagged else ''}"
                                               for au, n in zip(matrix.aus, matrix.n)], fontsize=7)
        ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes.tolist(), shrink=0.8).set_label("share of positive relevance", fontsize=8)
    return figure


def _cell_outline(row: int, column: int):
    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2)


def _upsample(heatmap: np.ndarray, size: int) -> np.ndarray:
    factor = size // heatmap.shape[0]
    return np.kron(heatmap, np.ones((factor, factor)))


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def strategies_figure(strategies: list, images: np.ndarray, heatmaps: np.ndarray, aus, title: str) -> Figure:
    """One row per cluster of every AU's `strategies.AUStrategies`: the cluster's mean heatmap, then its
    `EXAMPLES_PER_CLUSTER` most typical faces (closest in cosine to the mean) with their heatmaps.

    images: (n, 112, 112, 3) uint8 of the role; heatmaps: (A, n, s, s) the downsampled heatmaps clustered, AUs in
    `aus` order.
    """
    rows = [(s, c) for s in strategies for c in range(s.clustering.count)]
    if not rows:
        raise ValueError(f"strategies_figure({title}): no clusters")
    size = images.shape[1]
    figure = Figure(figsize=(1.25 * (EXAMPLES_PER_CLUSTER + 1) + 1.0, 1.3 * len(rows) + 0.6), layout="constrained")
    axes = figure.subplots(len(rows), EXAMPLES_PER_CLUSTER + 1, squeeze=False)
    for (s, c), row in zip(rows, axes):
        mean = s.mean_heatmaps[c]
        _show(row[0], lrp_heatmaps.heatmap_rgb(mean))
        size_c = int(np.sum(s.clustering.labels == c))
        row[0].set_ylabel(f"AU{s.au} #{c}\nn={size_c}, μ={s.mu[c]:.2f}", fontsize=7)
        members = s.members(c)
        a = tuple(aus).index(s.au)
        unit = strategies_lib.features(heatmaps[a, members])
        typical = members[np.argsort(-(unit @ mean.ravel()), kind="stable")[:EXAMPLES_PER_CLUSTER]]
        for ax, i in zip(row[1:], typical):
            _show(ax, lrp_heatmaps.blend_heatmap(images[i] / 255.0, _upsample(heatmaps[a, i], size)))
        for ax in row[1 + len(typical):]:
            ax.set_axis_off()
    axes[0, 0].set_title("cluster mean", fontsize=8)
    axes[0, 1].set_title("most typical faces", fontsize=8, loc="left")
    figure.suptitle(title, fontsize=9)
    return figure


def write_figures(run: rundir.RunDir, explained, analysis) -> None:
    """The relevance-region matrices of every role under the main composite (one figure) and each role's strategies
    (`strategies_<role>.png`) of an `analysis.verify.Analysis` of `explained`."""
    composite = explained.composites[0]
    matrices = {f"{explained.results[composite, role].records.name} ({role}), {composite}":
                analysis.region_matrices[composite, role] for role in explained.roles}
    figures.save_figure(region_matrix_figure(matrices), run.figure(rundir.RELEVANCE_REGIONS_FIGURE))
    for role, found in analysis.strategies.items():
        result = explained.results[composite, role]
        if any(s.clustering.count for s in found):
            figures.save_figure(strategies_figure(found, result.records.image, result.small_heatmaps, analysis.aus,
                                                  f"{result.records.name} ({role}), {composite}: strategies per AU"),
                                run.figure(rundir.strategies_figure(role)))
