"""Checkpoints: what training saved restores for inference through the `jax.eval_shape` template (no optimizer),
a checkpoint of another width is refused naming the parameter, a damaged newest step falls back to an older one."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from aujax import checkpoints, distributed, rundir, train
from aujax import model as model_lib
from tests.support import REPO, TINY_WIDTHS, _cfg, _fold_setup


@pytest.fixture(scope="module")
def trained_fold(tmp_path_factory):
    """A fold of the tiny model trained for 2 epochs: (fold directory, its final variables)."""
    trainer, fold, data, labels = _fold_setup(_cfg())
    directory = rundir.FoldDir(str(tmp_path_factory.mktemp("fold") / "fold_00"))
    variables, _ = train.fit_fold(trainer, fold, data, labels, directory.root, train.StopRequested())
    return directory, jax.device_get(variables)


@pytest.mark.slow
def test_a_trained_fold_restores_for_inference_through_the_eval_shape_template(trained_fold):
    directory, variables = trained_fold
    mesh = distributed.make_mesh()
    restored = checkpoints.restore_variables(model_lib.create_model(TINY_WIDTHS), directory.latest, mesh)
    assert set(restored) == {"params", "batch_stats"}
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(variables), strict=True):
        assert got.sharding.is_fully_replicated and len(got.sharding.device_set) == mesh.size
        np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.slow
def test_a_checkpoint_of_another_width_is_refused_naming_the_parameter(trained_fold):
    directory, _ = trained_fold
    with pytest.raises(ValueError,
                       match=r"other settings: parameter \[.*\] has shape .* \(check --model and --width\)"):
        checkpoints.restore_variables(model_lib.create_model((8, 8, 8, 8)), directory.latest, distributed.make_mesh())


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_newest_step_and_deletes_it(trained_fold, tmp_path):
    import shutil

    directory, _ = trained_fold
    copy = rundir.FoldDir(str(tmp_path / "fold_00"))
    shutil.copytree(directory.root, copy.root)
    steps = sorted(int(s) for s in os.listdir(copy.latest) if s.isdigit())
    assert len(steps) == checkpoints.KEEP_LATEST
    for root, _, names in os.walk(os.path.join(copy.latest, str(steps[-1]))):
        for name in names:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(os.path.getsize(f.name) // 2)
    trainer, fold, _, _ = _fold_setup(_cfg())
    state = train.init_state(trainer.model, trainer.optimizer, jax.random.key(0), trainer.mesh)
    saved = checkpoints.FoldCheckpoints(copy)
    with saved.writing(state):
        restored = saved.resume(state)
        assert int(restored["step"]) == steps[0]
        assert saved.latest.all_steps() == [steps[0]]


def test_missing_checkpoints_say_to_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        checkpoints.restore_variables(model_lib.create_model(TINY_WIDTHS), str(tmp_path / "latest"),
                                      distributed.make_mesh())


def test_restoring_for_inference_needs_no_optimizer():
    code = "import sys; import aujax.checkpoints; assert 'optax' not in sys.modules and 'aujax.train' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
