"""The paper's protocol: leave-one-subject-out over the `cv` role with the `train` role always in training, the best
fold's model tested cross-domain on the `cross` role; Tables 1 and 2.

Fold s trains on every image of the `train` role and of the `cv` role whose subject is not s, and tests on the `cv`
images of subject s (a subject id that occurs in both roles is held out of both). Each fold ends after
`config.train.epochs` epochs; its held-out probabilities are saved, so a resumed run skips finished folds and
`--mode=evaluate` rebuilds the tables without training.

Table 1 pools the held-out predictions of all folds (every cv image predicted by the model that never saw its subject)
and also averages each AU's scores over the folds where that AU has enough positives. The best fold is the one with
the highest held-out mean F1; its final model is tested on the `cross` role (Table 2).

Where a role's records carry MediaPipe blendshapes, each table also gets the zero-training baseline row
"MediaPipe blendshapes" (`blendshapes.blendshape_au_labels`), scored on the same images as the ResNet's row: in
Table 1 the cv images of the folds' subjects (those the pooled row scores), in Table 2 the cross role.
"""

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from aujax import checkpoints
from aujax import distributed
from aujax import facs
from aujax import files
from aujax import metrics
from aujax import model as model_lib
from aujax import rundir
from aujax import train
from aujax.data import blendshapes, records, sources

BASELINE_METHOD = "MediaPipe blendshapes"


def build_folds(train_role: records.FaceRecords, cv_role: records.FaceRecords,
                max_folds: int) -> tuple[records.FaceRecords, list[train.FoldSpec]]:
    """The resident dataset (train role, then cv role) and one fold per cv subject (the first `max_folds` if > 0)."""
    resident = records.concatenate([train_role, cv_role], name=f"{train_role.name}+{cv_role.name}")
    in_cv = np.arange(len(resident)) >= len(train_role)
    subjects = cv_role.subjects[: max_folds or None]
    shared = set(subjects) & set(train_role.subjects)
    if shared:
        logging.warning("subjects %s are in both the train and cv roles: each is held out of both", sorted(shared))
    folds = []
    for k, subject in enumerate(subjects):
        held_out = resident.subject == subject
        folds.append(train.FoldSpec(fold=k, name=subject, train_index=np.flatnonzero(~held_out),
                                    test_index=np.flatnonzero(held_out & in_cv)))
    return resident, folds


def train_config(config) -> train.TrainConfig:
    return train.TrainConfig(
        epochs=config.train.epochs, batch_size=config.train.batch_size, learning_rate=config.train.learning_rate,
        momentum=config.train.momentum, seed=config.seed, pos_weight_max=config.train.pos_weight_max,
        checkpoint_every_steps=config.train.checkpoint_every_steps, threshold=config.model.threshold,
        min_support=config.protocol.min_support, log_every_steps=config.train.get("log_every_steps", 10))


@dataclasses.dataclass
class FoldResult:
    name: str
    test_index: np.ndarray      # (n,) into the resident dataset
    probabilities: np.ndarray   # (n, A), the run's AU set
    history: list
    seconds: float | None = None  # wall time of the session that finished the fold (training and prediction)

    def save(self, fold_dir: rundir.FoldDir) -> None:
        files.write_npz(fold_dir.predictions, test_index=self.test_index, probabilities=self.probabilities)
        files.write_json(fold_dir.result, {"subject": self.name, "history": self.history, "seconds": self.seconds})

    @staticmethod
    def load(fold_dir: rundir.FoldDir) -> "FoldResult | None":
        """The saved result of a finished fold, None if the fold has not finished."""
        result = files.read_json(fold_dir.result)
        if result is None:
            return None
        with np.load(fold_dir.predictions, allow_pickle=False) as p:
            return FoldResult(result["subject"], p["test_index"], p["probabilities"], result["history"],
                              result.get("seconds"))


def finished_fold(workdir: str, fold: train.FoldSpec) -> FoldResult | None:
    """The saved result of `fold`, None if it has not finished; ValueError where the saved result held out other
    images than the fold holds out now (the data changed since)."""
    directory = rundir.RunDir(workdir).fold(fold.fold)
    done = FoldResult.load(directory)
    if done is not None and (done.name != fold.name or not np.array_equal(done.test_index, fold.test_index)):
        raise ValueError(f"{directory.root} holds the result of a fold that held out {len(done.test_index)} images of "
                         f"subject {done.name}; this fold holds out {len(fold.test_index)} of subject {fold.name}: "
                         "the data differ from those the run was trained on; use them or a new --workdir")
    return done


def holds_trained_state(workdir: str) -> bool:
    """Whether `workdir` holds a finished fold or a checkpoint of one (an orbax step directory in `latest/`)."""
    return any(os.path.isfile(f.result) or checkpoints.holds_step(f.latest) for f in rundir.RunDir(workdir).folds())


def load_roles(config) -> dict[str, records.FaceRecords]:
    """Every role's records with the label columns of the run's AU set (`config.aus`), in its order; ValueError
    naming the dataset and the AU where a role's dataset does not code one."""
    aus = facs.resolve_aus(config.aus)
    roles = {}
    for role in sources.ROLES:
        roles[role] = sources.load_role(role, config.data[role], config).with_aus(aus)
        logging.info("%s role: %s, %d images, %d subjects", role, roles[role].name, len(roles[role]),
                     len(roles[role].subjects))
    return roles


def run_training(config, workdir: str, roles: dict, on_start: Callable[[], None] = lambda: None
                 ) -> list[FoldResult]:
    """Train every fold not finished yet; return the results of all folds.

    All folds are checked first, before anything is written: a finished one must have held out the images it holds
    out now (`finished_fold`), an unfinished one needs at least one batch of training images. `on_start` is called
    then, before the first fold trains.
    """
    resident, folds = build_folds(roles["train"], roles["cv"], config.protocol.max_folds)
    finished = [finished_fold(workdir, fold) for fold in folds]
    check_batches([fold for fold, done in zip(folds, finished) if done is None], config.train.batch_size)
    on_start()
    trainer = train.Trainer(create_model(config), train_config(config), distributed.make_mesh())
    data = train.put_on_devices(resident, trainer.mesh)
    stop = train.StopRequested().install()
    results = []
    for fold, done in zip(folds, finished):
        directory = rundir.RunDir(workdir).fold(fold.fold)
        if done is None:
            logging.info("fold %d/%d: holding out subject %s (%d train, %d test images)", fold.fold + 1,
                         len(folds), fold.name, len(fold.train_index), len(fold.test_index))
            started = time.perf_counter()
            variables, history = train.fit_fold(trainer, fold, data, resident.labels, directory.root, stop)
            probabilities = trainer.predict(variables, data, fold.test_index)
            done = FoldResult(fold.name, fold.test_index, probabilities, history, time.perf_counter() - started)
            logging.info("fold %d/%d (%s) done in %.1f s", fold.fold + 1, len(folds), fold.name, done.seconds)
            if jax.process_index() == 0:
                done.save(directory)
            distributed.barrier(f"fold {fold.fold} saved")  # the other processes read it in `evaluate`
        results.append(done)
    return results


def check_batches(folds: list[train.FoldSpec], batch_size: int) -> None:
    """ValueError naming the folds with fewer training images than one batch of `batch_size`."""
    short = [f"{fold.name} ({len(fold.train_index)} training images)" for fold in folds
             if len(fold.train_index) < batch_size]
    if short:
        raise ValueError(f"the folds holding out {', '.join(short)} have fewer training images than one batch of "
                         f"{batch_size}; lower --batch_size")


def create_model(config):
    """The model of `config`: its architecture and widths, one output per AU of `config.aus`."""
    return model_lib.create_model(config.model.widths, num_outputs=len(facs.resolve_aus(config.aus)),
                                  name=config.model.name, dtype=config.model.dtype)


def loso_scores(results: list[FoldResult], labels: np.ndarray, threshold: float, min_support: int,
                au_ids: tuple[int, ...], subjects: np.ndarray | None = None,
                bootstrap: metrics.Bootstrap | None = None):
    """(pooled scores, mean-over-folds scores, per-fold scores) of the held-out predictions; labels (N, A) of the AUs
    `au_ids`; with `subjects` (N,) and `bootstrap`, the pooled and fold-mean F1s get intervals over subjects."""
    per_fold = [metrics.per_au_scores(labels[r.test_index], metrics.decisions(r.probabilities, threshold),
                                      min_support, au_ids=au_ids) for r in results]
    pooled_index = np.concatenate([r.test_index for r in results])
    pooled_prob = np.concatenate([r.probabilities for r in results])
    pooled = metrics.per_au_scores(labels[pooled_index], metrics.decisions(pooled_prob, threshold), min_support,
                                   au_ids=au_ids, subjects=None if subjects is None else subjects[pooled_index],
                                   bootstrap=bootstrap)
    return pooled, metrics.mean_over_folds(per_fold, bootstrap), per_fold


def bootstrap_of(config) -> metrics.Bootstrap:
    """The F1 intervals' resampling: `config.analysis`, seeded by `config.seed`."""
    return metrics.Bootstrap(config.analysis.bootstrap_samples, config.seed, config.analysis.confidence)


def best_fold(per_fold: list[dict]) -> int:
    means = [metrics.mean_f1(s) for s in per_fold]
    return int(np.argmax([-1.0 if m is None else m for m in means]))


def restore_fold_variables(trainer: train.Trainer, workdir: str, fold: int) -> dict:
    """The final (latest) parameters and batch statistics of a finished fold."""
    return checkpoints.restore_variables(trainer.model, rundir.RunDir(workdir).fold(fold).latest, trainer.mesh)


@dataclasses.dataclass
class LosoOutcome:
    """The finished folds of a run, their held-out scores and the best fold's final model."""

    resident: records.FaceRecords
    results: list[FoldResult]
    pooled: dict                 # per-AU scores of the pooled held-out predictions
    fold_mean: dict              # per-AU scores averaged over folds
    per_fold: list[dict]
    best: int                    # index of the fold with the highest held-out mean F1
    trainer: train.Trainer
    variables: dict              # {'params', 'batch_stats'} of the best fold's last epoch

    @property
    def histories(self) -> dict:
        return {r.name: r.history for r in self.results}


def loso_outcome(config, workdir: str, roles: dict) -> LosoOutcome:
    """Scores of the saved fold results and the best fold's model; FileNotFoundError naming unfinished folds."""
    resident, folds = build_folds(roles["train"], roles["cv"], config.protocol.max_folds)
    results = [finished_fold(workdir, f) for f in folds]
    missing = [f.name for f, r in zip(folds, results) if r is None]
    if missing:
        raise FileNotFoundError(f"{workdir}: folds for subjects {missing} have not finished; run --mode=train")
    pooled, fold_mean, per_fold = loso_scores(results, resident.labels, config.model.threshold,
                                              config.protocol.min_support, resident.au_ids, resident.subject,
                                              bootstrap_of(config))
    best = best_fold(per_fold)
    trainer = train.Trainer(create_model(config), train_config(config), distributed.make_mesh())
    return LosoOutcome(resident, results, pooled, fold_mean, per_fold, best, trainer,
                       restore_fold_variables(trainer, workdir, best))


def baseline_rows(role_records: records.FaceRecords, min_support: int, table: str,
                  bootstrap: metrics.Bootstrap | None = None) -> list[dict]:
    """The table rows of the MediaPipe-blendshape baseline on `role_records`: `[{"method", "scores"}]` with
    `metrics.per_au_scores` of `blendshape_au_labels` against the labels, or `[]` (logged, naming `table`) when the
    records carry no blendshapes (synthetic faces, builds with landmarks="dataset"). AUs without a blendshape rule
    (`blendshapes.AU_RULES`) get no score, and say so."""
    if role_records.blendshapes is None:
        logging.info("%s has no MediaPipe blendshapes (synthetic faces or a landmarks=dataset build): %s gets no "
                     "%r row", role_records.name, table, BASELINE_METHOD)
        return []
    aus = role_records.au_ids
    ruled = [j for j, au in enumerate(aus) if au in blendshapes.AU_RULES]
    predictions = np.zeros(role_records.labels.shape, np.uint8)
    predictions[:, ruled] = blendshapes.blendshape_au_labels(role_records.blendshapes, tuple(aus[j] for j in ruled))
    scores = metrics.per_au_scores(role_records.labels, predictions, min_support, au_ids=aus,
                                   subjects=role_records.subject, bootstrap=bootstrap)
    for au in (au for au in aus if au not in blendshapes.AU_RULES):
        scores[f"AU{au}"].update(f1=None, precision=None, recall=None, reason="no MediaPipe blendshape rule",
                                 **({"ci_low": None, "ci_high": None} if bootstrap else {}))
    return [{"method": BASELINE_METHOD, "scores": scores}]


@dataclasses.dataclass
class Table:
    """A per-AU table in `report.write_table` form: rows `[{"method", "scores"}]`, one line per key of `keys`."""

    stem: str
    title: str
    rows: list[dict]
    keys: tuple[str, ...] = ("f1", "ci_low", "ci_high", "precision", "recall", "support")


@dataclasses.dataclass
class Evaluation:
    """Tables 1 and 2 of a run and its summary (results/summary.json)."""

    summary: dict
    tables: list[Table]


def evaluate(config, roles: dict, outcome: LosoOutcome) -> Evaluation:
    """Tables 1 and 2 of a run's `outcome`: the pooled and fold-mean held-out scores, the best fold's model on the
    cross role, each beside the blendshape baseline where the records carry blendshapes."""
    results, per_fold, best = outcome.results, outcome.per_fold, outcome.best
    threshold, min_support = config.model.threshold, config.protocol.min_support
    cross_prob = outcome.trainer.predict(outcome.variables, train.put_on_devices(roles["cross"], outcome.trainer.mesh),
                                         np.arange(len(roles["cross"])))
    bootstrap = bootstrap_of(config)
    cross_scores = metrics.per_au_scores(roles["cross"].labels, metrics.decisions(cross_prob, threshold),
                                         min_support, au_ids=roles["cross"].au_ids, subjects=roles["cross"].subject,
                                         bootstrap=bootstrap)
    pooled, fold_mean = outcome.pooled, outcome.fold_mean
    summary = {"best_fold": best, "best_fold_subject": results[best].name,
               "held_out_mean_f1_per_fold": {r.name: metrics.mean_f1(s) for r, s in zip(results, per_fold)},
               "loso_pooled_mean_f1": metrics.mean_f1(pooled), "cross_mean_f1": metrics.mean_f1(cross_scores)}
    held_out_cv = roles["cv"].select(np.isin(roles["cv"].subject, [r.name for r in results]))
    table1 = Table("table1_f1", f"Table 1: leave-one-subject-out F1 on {roles['cv'].name} ({len(results)} folds, "
                   f"trained with {roles['train'].name}; ci: {bootstrap.level:.0%} bootstrap interval over subjects, "
                   "for the fold mean over folds)",
                   [{"method": "ResNet-18 pooled", "scores": pooled},
                    {"method": "ResNet-18 fold mean", "scores": fold_mean},
                    *baseline_rows(held_out_cv, min_support, "Table 1", bootstrap)])
    table2 = Table("table2_cross_f1", f"Table 2: cross-domain F1 on {roles['cross'].name} (model of the best fold, "
                   f"subject {results[best].name}; ci: {bootstrap.level:.0%} bootstrap interval over subjects)",
                   [{"method": "ResNet-18", "scores": cross_scores},
                    *baseline_rows(roles["cross"], min_support, "Table 2", bootstrap)])
    return Evaluation(summary, [table1, table2])
