"""Figures of the faithfulness and sanity analyses: does the model depend on what the heatmaps rank first and on the
AU's region (`faithfulness_figure`), and do the heatmaps depend on the model (`randomisation_figure`)? Builders return
a matplotlib `Figure`; `write_model_checks` writes them.
"""

from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from aujax import rundir
from aujax.analysis import faithfulness as faithfulness_lib
from aujax.analysis import sanity as sanity_lib
from aujax.figures import save_figure

_REGION_COLOURS = {"own": "#2ca02c", "random": "#7f7f7f", "background": "#1f77b4"}


def _colours(names) -> dict:
    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(names)}


def faithfulness_figure(results: Mapping[str, faithfulness_lib.Faithfulness]) -> Figure:
    """Per dataset (a column): the pixel-flipping curves, mean logit of the correctly predicted AUs against the share
    of pixels filled, most relevant first per composite and in random order (dashed), AOPC in the legend (top); the
    mean logit drop per AU when its own region, a random face region of its area or the background is filled
    (bottom)."""
    if not results:
        raise ValueError("faithfulness_figure: no results")
    figure = Figure(figsize=(6.2 * len(results), 7.4), layout="constrained")
    axes = figure.subplots(2, len(results), squeeze=False)
    for column, (title, result) in enumerate(results.items()):
        top, bottom = axes[0, column], axes[1, column]
        overall = result.aopc_overall()
        colours = _colours(result.curves)
        for composite, curve in result.curves.items():
            top.plot(100 * result.fractions, result.mean_curve(curve), marker="o", markersize=3,
                     color=colours[composite], label=f"{composite} (AOPC {_number(overall[composite])})")
        top.plot(100 * result.fractions, result.mean_curve(result.random_curve), color="black", linestyle="--",
                 label=f"{faithfulness_lib.RANDOM_ORDER} (AOPC {_number(overall[faithfulness_lib.RANDOM_ORDER])})")
        top.set_xlabel(f"image filled ({result.fill}, {faithfulness_lib.FLIP_PATCH}x{faithfulness_lib.FLIP_PATCH} patches, "
                       "most relevant first), %")
        top.set_ylabel("mean logit of the correctly predicted AUs")
        top.set_title(f"{title}: pixel flipping, n = {int(result.selected.sum())} pairs", fontsize=10)
        top.legend(fontsize=7)
        width = 0.8 / len(faithfulness_lib.REGION_SETS)
        positions = np.arange(len(result.aus))
        for i, name in enumerate(faithfulness_lib.REGION_SETS):
            bottom.bar(positions + (i - 1) * width, np.nan_to_num(result.mean_per_au(result.drops[name])), width,
                       color=_REGION_COLOURS[name], label=f"{name} region" if name != "background" else name)
        bottom.axhline(0.0, color="black", linewidth=0.6)
        counts = result.selected.sum(axis=0)
        bottom.set_xticks(positions, [f"AU{au}\nn={n}" for au, n in zip(result.aus, counts)], fontsize=7)
        bottom.set_ylabel("mean logit drop when filled")
        bottom.set_title(f"{title}: region perturbation", fontsize=10)
        bottom.legend(fontsize=7)
    return figure


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def randomisation_figure(results: Mapping[str, sanity_lib.SanityResult], threshold: float) -> Figure:
    """Per dataset (a row): the mean rank correlation of |heatmap| and the mean SSIM between the trained model's
    heatmaps and those of the model randomised from the head down to each level, one line per composite; the trained
    model's own similarity (1) first, the flagging `threshold` dashed."""
    if not results:
        raise ValueError("randomisation_figure: no results")
    figure = Figure(figsize=(11.0, 3.8 * len(results)), layout="constrained")
    axes = figure.subplots(len(results), len(sanity_lib.METRICS), squeeze=False)
    labels = {"spearman": "Spearman rank correlation of |R|", "ssim": "SSIM of |R| / max |R|"}
    for row, (title, result) in enumerate(results.items()):
        colours = _colours(result.composites)
        flagged = set(result.flagged(threshold))
        ticks = ["trained", *result.levels]
        for ax, metric in zip(axes[row], sanity_lib.METRICS):
            for composite in result.composites:
                curve = [1.0] + [np.nan if v is None else v for v in result.curve(metric, composite)]
                ax.plot(range(len(ticks)), curve, marker="o", markersize=3, color=colours[composite],
                        label=composite + (" (flagged)" if composite in flagged else ""))
            ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8)
            ax.axhline(0.0, color="grey", linewidth=0.5)
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=8)
            ax.set_xlabel("randomised from the head down to")
            ax.set_ylabel(labels[metric])
            ax.set_ylim(-0.2, 1.05)
            ax.set_title(f"{title}: cascading randomisation", fontsize=10)
        axes[row, 0].legend(fontsize=7)
    return figure


def write_model_checks(run, checks) -> None:
    """The figures of an `analysis.model_checks.ModelChecks` under `run.figures` (a `rundir.RunDir`), titled by
    dataset: `rundir.FAITHFULNESS_FIGURE` and `rundir.SANITY_FIGURE` (each where its analysis ran)."""
    if checks.faithfulness:
        save_figure(faithfulness_figure({r.name: r for r in checks.faithfulness.values()}),
                    run.figure(rundir.FAITHFULNESS_FIGURE))
    if checks.sanity:
        save_figure(randomisation_figure({r.name: r for r in checks.sanity.values()}, checks.threshold),
                    run.figure(rundir.SANITY_FIGURE))
