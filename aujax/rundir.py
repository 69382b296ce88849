"""Where a run's files land under `--workdir`: every path of the layout (README "Outputs"), from one object.

```
config.json                                the run record (settings + data fingerprints)
checkpoints/fold_XX/latest/, best/         orbax checkpoint managers (`aujax.checkpoints`)
checkpoints/fold_XX/history.json           one record per epoch, kept across resumes
checkpoints/fold_XX/result.json, predictions.npz   a finished fold
tensorboard/fold_XX/                       TensorBoard event files of a fold's training (`aujax.events`)
results/<table>.csv|json, summary.json, mu_per_subject.csv, preprocess_report.csv
results/faithfulness.csv|json, sanity_randomisation.csv|json   faithfulness, randomisation sanity check
results/relevance_regions.csv|json, mu_differences.csv|json, strategies_<role>.json   region matrix, paired μ
                                           differences between composites, SpRAy strategies (`aujax.analysis`)
results/heatmaps_<role>.npz                each role's explained heatmaps (config.explain.save_heatmaps)
results/figures/<figure>.png               FIGURE1, figure2(au), heatmap_grid(role), TRAINING_CURVES, MU_DISTRIBUTIONS,
                                           FAITHFULNESS_FIGURE, SANITY_FIGURE, RELEVANCE_REGIONS_FIGURE,
                                           strategies_figure(role)
report.html
explain_image/<name>/                      one explained photo, folder, glob or video (`aujax.explain_image`)
logs/                                      tracebacks of unexpected errors
.lock                                      the workdir lock (`aujax.workdir_lock`)
```

Nothing here touches the filesystem except `RunDir.folds`, which lists the fold directories there are.
"""

import dataclasses
import os

from aujax import facs

FIGURE1 = "figure1_regions.png"
FIGURE2_PREFIX = "figure2_"
HEATMAP_GRID_PREFIX = "heatmaps"
TRAINING_CURVES = "training_curves.png"
MU_DISTRIBUTIONS = "mu_distributions.png"
FAITHFULNESS = "faithfulness"  # table stem: results/faithfulness.csv|json
SANITY = "sanity_randomisation"
FAITHFULNESS_FIGURE = "faithfulness.png"
SANITY_FIGURE = "sanity_randomisation.png"
RELEVANCE_REGIONS = "relevance_regions"  # table stem: results/relevance_regions.csv|json, the region matrix
MU_DIFFERENCES = "mu_differences"  # table stem: paired bootstrap of μ between composites
RELEVANCE_REGIONS_FIGURE = "relevance_regions.png"
STRATEGIES_PREFIX = "strategies_"
_FOLD_PREFIX = "fold_"


def figure2(au: int) -> str:
    """'figure2_AU4.png'; ValueError for an AU that aujax has no region for."""
    facs.resolve_aus([au])
    return f"{FIGURE2_PREFIX}AU{au}.png"


def heatmap_grid(role: str) -> str:
    """'heatmaps_cv.png'."""
    return f"{HEATMAP_GRID_PREFIX}_{role}.png"


def strategies(role: str) -> str:
    """'strategies_cv.json', the SpRAy clusters of a role (under results/)."""
    return f"{STRATEGIES_PREFIX}{role}.json"


def strategies_figure(role: str) -> str:
    """'strategies_cv.png'."""
    return f"{STRATEGIES_PREFIX}{role}.png"


@dataclasses.dataclass(frozen=True)
class FoldDir:
    """`checkpoints/fold_XX/` of one fold."""

    root: str

    @property
    def latest(self) -> str:
        return os.path.join(self.root, "latest")

    @property
    def best(self) -> str:
        return os.path.join(self.root, "best")

    @property
    def history(self) -> str:
        return os.path.join(self.root, "history.json")

    @property
    def result(self) -> str:
        return os.path.join(self.root, "result.json")

    @property
    def predictions(self) -> str:
        return os.path.join(self.root, "predictions.npz")

    @property
    def name(self) -> str:
        """'fold_03'."""
        return os.path.basename(self.root)

    @property
    def tensorboard(self) -> str:
        """<workdir>/tensorboard/fold_XX/, the fold's TensorBoard event files (`aujax.events`): beside checkpoints/,
        so that `tensorboard --logdir <workdir>/tensorboard` shows one run per fold."""
        return os.path.join(os.path.dirname(os.path.dirname(self.root)), "tensorboard", self.name)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The paths of one run's workdir `root`."""

    root: str

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.json")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    def fold(self, fold: int) -> FoldDir:
        return FoldDir(os.path.join(self.checkpoints, f"{_FOLD_PREFIX}{fold:02d}"))

    def folds(self) -> list[FoldDir]:
        """The fold directories under checkpoints/, in fold order ([] where there are none)."""
        names = os.listdir(self.checkpoints) if os.path.isdir(self.checkpoints) else []
        return [FoldDir(os.path.join(self.checkpoints, n)) for n in sorted(names) if n.startswith(_FOLD_PREFIX)]

    @property
    def results(self) -> str:
        return os.path.join(self.root, "results")

    def result(self, name: str) -> str:
        """results/<name>, e.g. result('summary.json')."""
        return os.path.join(self.results, name)

    @property
    def summary(self) -> str:
        return self.result("summary.json")

    def heatmap_arrays(self, role: str) -> str:
        """results/heatmaps_<role>.npz: the role's explained heatmaps (`config.explain.save_heatmaps`)."""
        return self.result(f"heatmaps_{role}.npz")

    @property
    def figures(self) -> str:
        return os.path.join(self.results, "figures")

    def figure(self, name: str) -> str:
        """results/figures/<name>, e.g. figure(FIGURE1)."""
        return os.path.join(self.figures, name)

    @property
    def report(self) -> str:
        return os.path.join(self.root, "report.html")

    @property
    def explain_image(self) -> str:
        return os.path.join(self.root, "explain_image")

    @property
    def logs(self) -> str:
        return os.path.join(self.root, "logs")

    @property
    def lock(self) -> str:
        return os.path.join(self.root, ".lock")
