"""Checkpoints: save and resume a fold's training state, restore a model's variables for inference.

A fold keeps two orbax managers (`rundir.FoldDir`): `latest/` holds the newest 2 steps (for resume, and the final
model of a finished fold), `best/` the step of the highest held-out mean F1 (orbax's `best_fn` policy). A resume takes
the newest step that restores and falls back to older ones past a damaged checkpoint; steps newer than the one
resumed are deleted, so they are saved again when trained again. A checkpoint the filesystem has no room for is
refused before orbax writes anything (`FoldCheckpoints.save`), and a full disk met in orbax's writers is
`files.DiskFullError` too (`FoldCheckpoints.writing`).

Two managers rather than one with orbax's `AnyPreservationPolicy(LatestN(2), BestN(1))` (orbax 0.12 has it): the
steps saved inside an epoch (periodic, or on a stop request) have no held-out F1, and a resume deletes the steps newer
than the one it restored; in one manager either could prune the best step, while `best/` is written only at epoch ends
that improve the score and is never pruned by a resume.

Inference (`restore_variables`) restores `{'params', 'batch_stats'}` alone, replicated over a mesh, against a template
from `jax.eval_shape` of the model's init: no optimizer, nothing compiled. A checkpoint of a model of other settings
(another `--width`) is refused naming the first parameter whose shape differs, before orbax reads anything.
"""

import contextlib
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aujax import files
from aujax import model as model_lib
from aujax import rundir

KEEP_LATEST = 2
BEST_METRIC = "mean_f1"


def manager(directory: str, max_to_keep: int, best: bool) -> ocp.CheckpointManager:
    """An orbax manager of `directory` keeping `max_to_keep` steps: the newest, or with `best` those of the highest
    `BEST_METRIC`. Its multi-host barriers are named after the directory (latest, best), so that the two managers of
    a fold saving one step at the same time never share a barrier."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        best_fn=(lambda m: m[BEST_METRIC]) if best else None, best_mode="max",
        keep_checkpoints_without_metrics=not best,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=os.path.basename(os.path.normpath(directory))))
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def abstract_like(tree) -> dict:
    """`tree` as `jax.ShapeDtypeStruct`s with its shardings: a restore template."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def tree_bytes(tree) -> int:
    """The bytes of the arrays of `tree` (global arrays: all their shards)."""
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree))


def holds_step(directory: str) -> bool:
    """Whether the orbax manager directory `directory` holds a finished step (a directory named by its number)."""
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def restore_latest(checkpoints: ocp.CheckpointManager, template, partial: bool = False) -> dict | None:
    """The newest checkpoint of `checkpoints` that restores into `template`; a corrupt one is skipped with a warning
    (older ones are tried). With `partial`, only the entries of `template` are read (e.g. the variables of a state).

    None where the directory holds no checkpoint; ValueError where it holds some but none fits `template`
    (damaged, or written by a model of other settings).
    """
    args = (ocp.args.PyTreeRestore(item=template, restore_args=ocp.checkpoint_utils.construct_restore_args(template),
                                   partial_restore=True) if partial else ocp.args.StandardRestore(template))
    error = None
    for step in sorted(checkpoints.all_steps(), reverse=True):
        try:
            return checkpoints.restore(step, args=args)
        except Exception as e:  # orbax raises many kinds for a damaged or mismatched checkpoint
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            logging.warning("checkpoint %s/%d cannot be restored (%s); falling back to an older one",
                            checkpoints.directory, step, error)
    if error is not None:
        raise ValueError(f"no checkpoint in {checkpoints.directory} could be restored; damaged, or written by a model "
                         f"of other settings (such as --width)? Last error: {error}")
    return None


class FoldCheckpoints:
    """The `latest/` and `best/` managers of one fold directory."""

    def __init__(self, fold_dir: rundir.FoldDir):
        self.directory = fold_dir.root
        self.latest = manager(fold_dir.latest, KEEP_LATEST, best=False)
        self.best = manager(fold_dir.best, 1, best=True)

    def resume(self, state: dict) -> dict | None:
        """The newest restorable checkpoint in the form of `state` (None: there is none); newer steps are deleted."""
        restored = restore_latest(self.latest, abstract_like(state))
        step = int((restored or state)["step"])
        for unrestorable in [s for s in self.latest.all_steps() if s > step]:
            self.latest.delete(unrestorable)  # else orbax would not save that step again when it is trained again
        return restored

    @contextlib.contextmanager
    def writing(self, state: dict):
        """Within, orbax's full-disk errors are `DiskFullError` naming the fold and the bytes of `state`; on leaving,
        pending saves are waited for and the managers closed."""
        with files.disk_full_named(self.directory, tree_bytes(state)), contextlib.closing(self.latest), \
                contextlib.closing(self.best):
            yield self

    def save(self, step: int, state: dict, best_score: float | None = None) -> None:
        """Save `state` as `step` in latest/, and in best/ with `best_score` (None: not a new best); DiskFullError
        before anything is written where the filesystem has less room than that."""
        self._check_room(tree_bytes(state) * (1 if best_score is None else 2))
        self.latest.save(step, args=ocp.args.StandardSave(state))
        if best_score is not None:  # an epoch that is not better would be deleted by the manager at once
            self.best.save(step, args=ocp.args.StandardSave(state), metrics={BEST_METRIC: best_score})

    def wait(self) -> None:
        """Until the saves started are on disk."""
        self.latest.wait_until_finished()

    def _check_room(self, needed: int) -> None:
        """DiskFullError where the filesystem of latest/ has less than `needed` bytes free: a save that runs out of
        space fails in orbax's writer threads, which print their tracebacks. Every process takes the same branch, as
        a save needs them all."""
        directory = str(self.latest.directory)
        room = files.free_bytes(directory) >= needed
        if jax.process_count() > 1:
            room = bool(np.all(multihost_utils.process_allgather(np.asarray(room))))
        if not room:
            raise files.DiskFullError(files.disk_full_message(directory, needed))


def restore_saved(directory: str, step: int) -> dict:
    """The whole pytree saved at `step` of the orbax manager directory `directory`, as numpy arrays on the host,
    without the model: its shapes and dtypes come from the checkpoint's metadata, so it restores in any process with
    any devices (for comparing checkpoints of two runs)."""
    saved = ocp.CheckpointManager(os.path.abspath(directory), item_handlers=ocp.StandardCheckpointHandler(),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                                          saved.item_metadata(step))
        return jax.tree_util.tree_map(np.asarray, saved.restore(step, args=ocp.args.StandardRestore(abstract)))
    finally:
        saved.close()


def variables_template(model, mesh: Mesh) -> dict:
    """`{'params', 'batch_stats'}` of `model` as `jax.ShapeDtypeStruct`s replicated over `mesh` (`jax.eval_shape` of
    its init: nothing is computed)."""
    shapes = jax.eval_shape(lambda: model_lib.init_variables(model, jax.random.key(0)))
    replicated = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def restore_variables(model, directory: str, mesh: Mesh) -> dict:
    """{'params', 'batch_stats'} of `model` from the newest checkpoint in `directory` (an orbax manager directory
    such as `checkpoints/fold_03/latest`), replicated over `mesh`.

    FileNotFoundError where there is no checkpoint; ValueError naming the parameter where it holds a model of other
    settings.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no checkpoint directory; train first (--mode=train or --mode=all)")
    template = variables_template(model, mesh)
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0)
    checkpoints = ocp.CheckpointManager(os.path.abspath(directory), options=options)
    try:
        if checkpoints.latest_step() is not None:
            _check_parameter_shapes(os.path.join(os.path.abspath(directory), str(checkpoints.latest_step()),
                                                 "default"), template["params"])
        variables = restore_latest(checkpoints, template, partial=True)
    finally:
        checkpoints.close()  # else orbax's background threads print tracebacks when the process exits on an error
    if variables is None:
        raise FileNotFoundError(f"{directory}: no checkpoint to restore; train first (--mode=train or --mode=all)")
    return variables


def _shapes(tree) -> dict:
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_parameter_shapes(step_dir: str, params_template) -> None:
    """ValueError naming the first parameter whose stored shape differs from the model's, before any restore starts
    (a failed restore leaves orbax's background reads behind, which print tracebacks at exit; a partial restore
    would even return the stored shapes)."""
    try:
        stored = _shapes(ocp.StandardCheckpointer().metadata(step_dir).item_metadata["params"])
    except Exception:  # damaged metadata: restore_latest reports it (and falls back)
        return
    for name, shape in _shapes(params_template).items():
        if stored.get(name) != shape:
            raise ValueError(f"{step_dir}: this checkpoint holds a model of other settings: parameter {name} has shape "
                             f"{stored.get(name)} there, {shape} in the model asked for (check --model and --width)")
