import glob
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aujax import events, train
from tests.support import _cfg, _fold_setup


def read_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the event files in `directory`, read as TensorBoard reads them: files in name order,
    and a session START at step s hides the points of steps >= s written before it (tensorboardX's purge_step)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*tfevents*"))):
        for event in map(event_pb2.Event.FromString, _records(path)):
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                scalars = {tag: [p for p in points if p[0] < event.step] for tag, points in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _records(path: str):
    """The payloads of a TFRecord file (length u64, its CRC u32, payload, its CRC u32); CRCs not checked."""
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            yield f.read(length)
            f.read(4)


def test_step_losses_every_n_steps_and_epoch_scalars_read_back(tmp_path):
    with events.FoldEvents(str(tmp_path), start_step=0, every_steps=2) as writer:
        for step in range(1, 6):
            writer.step_loss(step, jnp.float32(step / 10))
        writer.epoch({"epoch": 1, "step": 5, "loss": 0.5, "held_out_mean_f1": None, "images_per_second": 120.0})
    scalars = read_scalars(str(tmp_path))
    assert scalars == {"train/loss": [(2, pytest.approx(0.2)), (4, pytest.approx(0.4))],
                       "epoch/loss": [(5, 0.5)], "epoch/images_per_second": [(5, 120.0)]}  # no F1: none scored


def test_a_writer_restarted_at_a_checkpoint_hides_the_points_a_killed_run_wrote_past_it(tmp_path):
    with events.FoldEvents(str(tmp_path), start_step=0, every_steps=1) as killed:  # killed at step 6, saved at 3
        for step in range(1, 7):
            killed.step_loss(step, step)
    with events.FoldEvents(str(tmp_path), start_step=3, every_steps=1) as resumed:
        for step in range(4, 7):
            resumed.step_loss(step, 10 * step)
    assert len(glob.glob(str(tmp_path / "*tfevents*"))) == 2  # one second apart at most: two files, neither overwritten
    assert read_scalars(str(tmp_path))["train/loss"] == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50), (6, 60)]


def test_only_process_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with events.FoldEvents(str(tmp_path / "tb"), start_step=0, every_steps=1) as writer:
        writer.step_loss(1, 0.5)
        writer.epoch({"step": 1, "loss": 0.5, "held_out_mean_f1": 0.3, "images_per_second": 9.0})
    assert not (tmp_path / "tb").exists()


class _StopAtStep(train.StopRequested):
    """Asks to stop once `step` steps have been taken, as SIGTERM would."""

    def __init__(self, step: int):
        super().__init__()
        self._step = step

    def after_step(self, step: int) -> None:
        self.requested = step >= self._step


@pytest.mark.slow
def test_a_fold_stopped_and_resumed_shows_each_step_once_with_the_loss_f1_and_rate_of_its_history(tmp_path):
    trainer, fold, data, labels = _fold_setup(_cfg(log_every_steps=1))  # 2 epochs of 2 steps
    checkpoint_dir = str(tmp_path / "checkpoints" / "fold_00")
    with pytest.raises(train.TrainingStopped):
        train.fit_fold(trainer, fold, data, labels, checkpoint_dir, _StopAtStep(3))
    _, history = train.fit_fold(trainer, fold, data, labels, checkpoint_dir, train.StopRequested())
    scalars = read_scalars(str(tmp_path / "tensorboard" / "fold_00"))
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert np.mean([loss for _, loss in scalars["train/loss"][2:]]) == pytest.approx(history[1]["loss"], rel=1e-5)
    for key, tag in events.EPOCH_TAGS.items():
        expected = [(h["step"], pytest.approx(h[key], rel=1e-6)) for h in history if h[key] is not None]
        assert scalars.get(tag, []) == expected, tag
    assert [step for step, _ in scalars["epoch/loss"]] == [2, 4]
