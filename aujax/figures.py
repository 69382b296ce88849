"""The report's figures as PNGs: AU regions (the paper's Figure 1), low- and high-μ examples per AU (Figure 2),
training curves and μ distributions.

Each figure has a builder that returns a matplotlib `Figure` (no pyplot, so no global state and no display needed;
PNGs are written by the Agg canvas) and a writer that saves it. Images are drawn with `extent=(0, size, size, 0)`,
so axes coordinates are the continuous pixel coordinates of `aujax.regions` (pixel (row i, column j) covers
x in [j, j+1), y in [i, i+1)): AU boxes and landmarks are drawn where μ looks for them.

The file names under `results/figures/` are `aujax.rundir`'s (the HTML report groups figures by them).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from aujax import facs, files, regions, rundir
from aujax.lrp import heatmaps as lrp_heatmaps

REGION_COLOUR = "#00c000"
REGION_LABEL = "AU region"  # label of every drawn region rectangle
LANDMARK_COLOUR = "#d62728"
# Landmarks on lower contours (lower lids, lower lip, inner lip) get their ids below the dot, the others above,
# so the ids of neighbouring contours (48/60, 54/64, 37/41 ...) do not overlap.
LABELS_BELOW = frozenset((40, 41, 46, 47, *range(55, 68)))


def save_figure(figure: Figure, path, dpi: int = 150) -> Path:
    """Write `figure` as a PNG (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def _check_shape(name: str, array: np.ndarray, shape: tuple) -> None:
    """ValueError unless `array` has `shape` (None entries match any size)."""
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        expected = ", ".join("k" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape ({expected}), got {array.shape}")


def _show_face(ax, image: np.ndarray) -> None:
    """`image` (h, w, 3) uint8 or float in [0, 1] in pixel coordinates, without ticks."""
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def region_boxes(landmarks: np.ndarray, aus: Sequence[int]) -> np.ndarray:
    """(k, 68, 2) landmarks -> float (k, A, K, 4) boxes (x0, y0, x1, y1) of the A AUs `aus` from
    `regions.au_region_boxes`."""
    return np.asarray(regions.au_region_boxes(np.asarray(landmarks, np.float32), aus=tuple(aus)))


def _face_and_au_axes(figure: Figure, count: int, width_per_column: float, height_per_row: float) -> tuple:
    """The face's axes (two columns wide, all rows high) and `count` AU axes beside it in 2 rows (3 beyond 12 AUs),
    at least 4 per row; the figure sized to fit. Returns (face axes, [AU axes])."""
    rows = 2 if count <= 12 else 3
    columns = max(4, -(-count // rows))
    figure.set_size_inches(width_per_column * (columns + 2), height_per_row * rows)
    grid = figure.add_gridspec(rows, columns + 2)
    return figure.add_subplot(grid[:, :2]), [figure.add_subplot(grid[a // columns, 2 + a % columns])
                                             for a in range(count)]


def _draw_region(ax, boxes: np.ndarray, fill: bool) -> None:
    """One AU's boxes (K, 4) as rectangles labelled `REGION_LABEL`, shaded when `fill` (not over heatmaps, whose
    colours must stay true); empty spare slots are skipped."""
    facecolor = to_rgba(REGION_COLOUR, 0.2 if fill else 0.0)
    for x0, y0, x1, y1 in boxes:
        if x1 > x0 and y1 > y0:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=facecolor,
                                   edgecolor=REGION_COLOUR, linewidth=1.2, label=REGION_LABEL))


def _number_landmarks(ax, landmarks: np.ndarray) -> None:
    """68 dots with their 0-based iBUG ids, readable on any skin (white text, dark outline)."""
    ax.scatter(landmarks[:, 0], landmarks[:, 1], s=4, c=LANDMARK_COLOUR, linewidths=0)
    outline = [patheffects.withStroke(linewidth=1.2, foreground="black")]
    for index, (x, y) in enumerate(landmarks):
        below = index in LABELS_BELOW
        ax.text(x + 0.5, y + 0.4 if below else y - 0.4, str(index), fontsize=4.5, color="white",
                path_effects=outline, ha="left", va="top" if below else "bottom")


def figure1_regions_figure(image: np.ndarray, landmarks: np.ndarray, aus: Sequence[int]) -> Figure:
    """The paper's Figure 1: the face with its 68 numbered landmarks and one panel per AU of the set `aus` with its
    region.

    image: (112, 112, 3) uint8; landmarks: (68, 2) (x, y) crop pixels, iBUG-68 order.
    """
    image, landmarks = np.asarray(image), np.asarray(landmarks, np.float32)
    _check_shape("image", image, (facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3))
    _check_shape("landmarks", landmarks, (facs.NUM_LANDMARKS, 2))
    boxes = region_boxes(landmarks[None], aus)[0]
    figure = Figure(layout="constrained")
    face_ax, au_axes = _face_and_au_axes(figure, len(aus), 13.0 / 6, 4.9 / 2)
    _show_face(face_ax, image)
    _number_landmarks(face_ax, landmarks)
    face_ax.set_title("68 landmarks (iBUG order, 0-based ids)", fontsize=9)
    for ax, au, au_boxes in zip(au_axes, aus, boxes):
        _show_face(ax, image)
        _draw_region(ax, au_boxes, fill=True)
        ax.set_title(facs.au_label(au), fontsize=9)
    return figure


def figure1_regions(image: np.ndarray, landmarks: np.ndarray, aus: Sequence[int], path) -> Path:
    """`figure1_regions_figure` written as a PNG at 200 dpi (landmark ids readable zoomed in); returns the path."""
    return save_figure(figure1_regions_figure(image, landmarks, aus), path, dpi=200)


def _mu_title(mu: float) -> str:
    return f"μ = {mu:.3f}" if np.isfinite(mu) else "μ = n/a"


def figure2_panel_figure(au: int, images: np.ndarray, heatmaps: np.ndarray, landmarks: np.ndarray,
                         mu: np.ndarray) -> Figure:
    """The paper's Figure 2 for one AU: k examples sorted by μ (left: lowest), each as the face (top row) and its
    LRP heatmap over the face with the AU's region drawn (bottom row), μ in the column title.

    images: (k, 112, 112, 3) uint8; heatmaps: (k, 112, 112) pixel relevance of AU `au`; landmarks: (k, 68, 2);
    mu: (k,) float, NaN shown as n/a. The heatmaps use the LRP colours of `aujax.lrp.heatmaps`, each scaled
    symmetrically by its own max |R|.
    """
    images, heatmaps = np.asarray(images), np.asarray(heatmaps, np.float64)
    landmarks, mu = np.asarray(landmarks, np.float32), np.asarray(mu, np.float64)
    size = facs.IMAGE_SIZE
    _check_shape("images", images, (None, size, size, 3))
    k = len(images)
    if k == 0:
        raise ValueError(f"figure2_panel(AU{au}): no examples")
    _check_shape("heatmaps", heatmaps, (k, size, size))
    _check_shape("landmarks", landmarks, (k, facs.NUM_LANDMARKS, 2))
    _check_shape("mu", mu, (k,))
    order = np.argsort(np.where(np.isfinite(mu), mu, np.inf), kind="stable")
    boxes = region_boxes(landmarks, (au,))[:, 0]
    figure = Figure(figsize=(1.6 * k + 0.8, 4.0), layout="constrained")
    axes = figure.subplots(2, k, squeeze=False)
    for position, i in enumerate(order):
        face_ax, heat_ax = axes[:, position]
        _show_face(face_ax, images[i])
        face_ax.set_title(_mu_title(mu[i]), fontsize=9)
        _show_face(heat_ax, lrp_heatmaps.blend_heatmap(images[i] / 255.0, heatmaps[i]))
        _draw_region(heat_ax, boxes[i], fill=False)
    axes[0, 0].set_ylabel("face", fontsize=9)
    axes[1, 0].set_ylabel("LRP + region", fontsize=9)
    colours = ScalarMappable(Normalize(-1.0, 1.0), lrp_heatmaps.COLORMAP)
    colourbar = figure.colorbar(colours, ax=axes[1, :].tolist(), shrink=0.9, ticks=[-1, 0, 1])
    colourbar.set_label("R / max |R|", fontsize=8)
    colourbar.ax.tick_params(labelsize=7)
    figure.suptitle(f"{facs.au_label(au)}: examples sorted by μ (low to high)", fontsize=10)
    return figure


def explained_image_figure(image: np.ndarray, heatmaps: np.ndarray, landmarks: np.ndarray, probabilities: np.ndarray,
                           mu: np.ndarray, threshold: float, aus: Sequence[int]) -> Figure:
    """One face explained: the crop with its landmarks, then per AU of the set `aus` (A AUs, the model's outputs) its
    heatmap over the face with the AU's region, the probability, the decision and μ.

    image: (112, 112, 3) uint8; heatmaps: (A, 112, 112) pixel relevance; landmarks: (68, 2); probabilities, mu: (A,).
    """
    image, heatmaps = np.asarray(image), np.asarray(heatmaps, np.float64)
    landmarks = np.asarray(landmarks, np.float32)
    _check_shape("heatmaps", heatmaps, (len(aus), facs.IMAGE_SIZE, facs.IMAGE_SIZE))
    boxes = region_boxes(landmarks[None], aus)[0]
    figure = Figure(layout="constrained")
    face_ax, au_axes = _face_and_au_axes(figure, len(aus), 2.0, 1.8)
    _show_face(face_ax, image)
    face_ax.scatter(landmarks[:, 0], landmarks[:, 1], s=4, c=LANDMARK_COLOUR, linewidths=0)
    face_ax.set_title("face crop and landmarks", fontsize=9)
    for a, (ax, au) in enumerate(zip(au_axes, aus)):
        _show_face(ax, lrp_heatmaps.blend_heatmap(image / 255.0, heatmaps[a]))
        _draw_region(ax, boxes[a], fill=False)
        decision = "yes" if probabilities[a] >= threshold else "no"
        ax.set_title(f"AU{au} p={probabilities[a]:.2f} ({decision}), {_mu_title(mu[a])}", fontsize=7)
    return figure


def figure2_panel(au: int, images: np.ndarray, heatmaps: np.ndarray, landmarks: np.ndarray, mu: np.ndarray,
                  path) -> Path:
    """`figure2_panel_figure` written as a PNG; returns the path."""
    return save_figure(figure2_panel_figure(au, images, heatmaps, landmarks, mu), path)


def _distinct_colours(count: int) -> list:
    """Distinct colours for `count` lines or datasets (tab10, then tab20, then a continuous map)."""
    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["viridis"](t) for t in np.linspace(0.0, 0.95, count)]


def _history_series(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of one history key; None values (e.g. F1 without enough positives) become NaN gaps."""
    epochs = np.array([h["epoch"] for h in history], np.float64)
    values = np.array([np.nan if h.get(key) is None else h[key] for h in history], np.float64)
    return epochs, values


def training_curves_figure(histories: Mapping[str, Sequence[Mapping]]) -> Figure:
    """Training loss and held-out mean F1 per epoch, one line per fold.

    histories: {fold name: [{"epoch", "loss", "held_out_mean_f1", ...} per epoch]} as `train.fit_fold` keeps them.
    """
    if not histories:
        raise ValueError("training_curves: no fold histories")
    figure = Figure(figsize=(11.0, 4.0), layout="constrained")
    loss_ax, f1_ax = figure.subplots(1, 2)
    for (name, history), colour in zip(histories.items(), _distinct_colours(len(histories))):
        marker = "o" if len(history) <= 30 else None
        for ax, key in ((loss_ax, "loss"), (f1_ax, "held_out_mean_f1")):
            ax.plot(*_history_series(history, key), color=colour, marker=marker, markersize=3, linewidth=1.2,
                    label=name)
    loss_ax.set_ylabel("training loss (weighted BCE)")
    f1_ax.set_ylabel("held-out mean F1")
    f1_ax.set_ylim(-0.02, 1.02)
    for ax in (loss_ax, f1_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    columns = 1 + len(histories) // 16
    f1_ax.legend(title="fold", fontsize=7, title_fontsize=8, ncols=columns, loc="upper left",
                 bbox_to_anchor=(1.01, 1.0))
    return figure


def training_curves(histories: Mapping[str, Sequence[Mapping]], path) -> Path:
    """`training_curves_figure` written as a PNG; returns the path."""
    return save_figure(training_curves_figure(histories), path)


def read_fold_histories(workdir: str) -> dict[str, list[dict]]:
    """{fold label: history} from `workdir/checkpoints/fold_XX/`, folds in order.

    A finished fold's `result.json` gives its held-out subject (label 'fold_00: S001'); a fold still training has
    only `history.json` (label 'fold_00'). Folds with neither are left out.
    """
    histories = {}
    for fold in rundir.RunDir(workdir).folds():
        result = files.read_json(fold.result)
        if result is not None:
            histories[f"{fold.name}: {result['subject']}"] = result["history"]
            continue
        history = files.read_json(fold.history)
        if history:
            histories[fold.name] = history
    return histories


def mu_by_au(mu: np.ndarray, keep: np.ndarray, au_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """(n, A) μ and a (n, A) bool mask of the pairs to show (e.g. correct positives & defined) of the A AUs `au_ids`
    -> {'AU4': 1-D array of the kept μ values, ...}, the input of `mu_distributions`."""
    mu, keep = np.asarray(mu), np.asarray(keep, bool)
    if mu.shape != keep.shape or mu.ndim != 2 or mu.shape[1] != len(au_ids):
        raise ValueError(f"mu {mu.shape} and keep {keep.shape} must both be (n, {len(au_ids)})")
    return {f"AU{au}": mu[keep[:, j], j] for j, au in enumerate(au_ids)}


def _finite(values) -> np.ndarray:
    values = np.asarray(values, np.float64).ravel()
    return values[np.isfinite(values)]


def mu_distributions_figure(mu_by_dataset: Mapping[str, Mapping[str, np.ndarray]],
                            ylabel: str = "μ (share of positive relevance in the AU region)") -> Figure:
    """Per-AU distributions of μ: a box and the individual values for each dataset (one colour each), n under each.

    mu_by_dataset: {dataset: {AU label, e.g. 'AU4': 1-D μ values}}; AUs in order of first appearance, NaN and inf
    dropped (n counts the finite values).
    """
    if not mu_by_dataset:
        raise ValueError("mu_distributions: no datasets")
    labels = list(dict.fromkeys(label for per_au in mu_by_dataset.values() for label in per_au))
    datasets = list(mu_by_dataset)
    width = 0.8 / len(datasets)
    rng = np.random.default_rng(0)  # jitter only; fixed so the PNG is reproducible
    figure = Figure(figsize=(max(6.0, 1.1 * len(labels) * max(1, len(datasets) / 2) + 2.0), 4.6),
                    layout="constrained")
    ax = figure.subplots()
    for d, (dataset, colour) in enumerate(zip(datasets, _distinct_colours(len(datasets)))):
        for g, label in enumerate(labels):
            values = _finite(mu_by_dataset[dataset].get(label, []))
            x = g - 0.4 + width * (d + 0.5)
            if values.size:
                ax.boxplot(values, positions=[x], widths=width * 0.8, showfliers=False, patch_artist=True,
                           boxprops={"facecolor": colour, "alpha": 0.35, "edgecolor": colour},
                           medianprops={"color": colour, "linewidth": 1.5}, whiskerprops={"color": colour},
                           capprops={"color": colour})
                jitter = rng.uniform(-width * 0.25, width * 0.25, values.size)
                ax.scatter(x + jitter, values, s=6, color=colour, alpha=0.7, linewidths=0, zorder=3)
            ax.text(x, -0.015, f"n={values.size}", transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=6.5, color=colour)
        ax.plot([], [], "s", color=colour, label=dataset)
    ax.set_xticks(range(len(labels)), labels)
    ax.tick_params(axis="x", pad=14, length=0)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="dataset", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def mu_distributions(mu_by_dataset: Mapping[str, Mapping[str, np.ndarray]], path) -> Path:
    """`mu_distributions_figure` written as a PNG; returns the path."""
    return save_figure(mu_distributions_figure(mu_by_dataset), path)


def write_explained(run: rundir.RunDir, explained, figure2_examples: list, grids: dict,
                    histories: Mapping[str, Sequence[Mapping]]) -> None:
    """The explain stage's figures under `run.figures`: Figure 1 (the first cv face, every AU of the set), Figure 2
    per AU (`explain.Figure2Examples` of the cv role), one heatmap grid per role ({role: `explain.HeatmapGrid`}), the
    training curves of `histories` and the μ distributions of every role under the main composite."""
    main = explained.main
    first = main["cv"].records
    figure1_regions(first.image[0], first.landmarks[0], first.au_ids, run.figure(rundir.FIGURE1))
    for example in figure2_examples:
        figure2_panel(example.au, first.image[example.index], example.heatmaps, first.landmarks[example.index],
                      example.mu, run.figure(rundir.figure2(example.au)))
    for role, grid in grids.items():
        lrp_heatmaps.save_heatmap_grid(run.figure(rundir.heatmap_grid(role)), grid.heatmaps, grid.images / 255.0,
                                       grid.titles, au_ids=grid.au_ids)
    if histories:  # a model trained elsewhere (--mode=explain_model) has none
        training_curves(histories, run.figure(rundir.TRAINING_CURVES))
    mu_distributions({result.records.name: mu_by_au(result.scores.values["mu"],
                                                    result.selected & result.scores.defined["mu"],
                                                    result.records.au_ids)
                      for result in main.values()}, run.figure(rundir.MU_DISTRIBUTIONS))
