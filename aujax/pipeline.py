"""Runs a mode of the command line: checks the settings, then calls the stages in order."""

import os
import time

import jax
from absl import logging

from aujax import files
from aujax import model as model_lib
from aujax import protocol
from aujax import train

MODES = {
    "all": "train every fold, then evaluate",
    "train": "train every fold not finished yet (leave-one-subject-out), then evaluate",
    "evaluate": "Tables 1 and 2 from a trained workdir",
    "preprocess": "build a real dataset: --dataset, --manual_dir, --data_dir",
}
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, train.NonFiniteLossError,
               train.TrainingStopped)
# Settings that change what a run trains: a workdir holding checkpoints of other settings is refused.
_RUN_IDENTITY = ("seed", "data", "synthetic", "model", "train", "protocol")


def check_settings(config) -> None:
    """Clear errors for settings that cannot work, before any data is generated or read."""
    model_lib.resolve_widths(config.model.widths)
    devices = jax.device_count()
    if config.train.batch_size < 1 or config.train.batch_size % devices:
        raise ValueError(f"--batch_size={config.train.batch_size} must be a positive multiple of the number of "
                         f"devices ({devices}: {jax.devices()[0].platform})")
    if config.train.epochs < 1:
        raise ValueError(f"--epochs={config.train.epochs} must be at least 1")
    if not 0.0 < config.model.threshold < 1.0:
        raise ValueError(f"--threshold={config.model.threshold} must lie strictly between 0 and 1")


def prepare_workdir(workdir: str, config) -> None:
    """Create `workdir`, check it is writable, and refuse one that holds a run with other settings."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} is not a writable directory ({e.strerror})") from None
    identity = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k] for k in _RUN_IDENTITY}
    path = os.path.join(workdir, "config.json")
    saved = files.read_json(path)
    if saved is not None and saved != identity:
        changed = sorted(k for k in identity if saved.get(k) != identity[k])
        raise ValueError(f"--workdir={workdir} holds a run with other settings ({', '.join(changed)} differ from "
                         f"{path}); use a new --workdir or the same settings")
    if jax.process_index() == 0:
        files.write_json(path, identity)


def run(mode: str, config, workdir: str, dataset: str | None = None, manual_dir: str | None = None) -> None:
    started = time.perf_counter()
    if mode == "preprocess":
        _preprocess(config, workdir, dataset, manual_dir)
        return
    check_settings(config)
    prepare_workdir(workdir, config)
    logging.info("%d %s device(s) on %d host(s)", jax.device_count(), jax.devices()[0].platform,
                 jax.process_count())
    roles = protocol.load_roles(config)
    if mode in ("train", "all"):
        protocol.run_training(config, workdir, roles)
    protocol.evaluate(config, workdir, roles)
    print(f"\nResults in {os.path.join(os.path.abspath(workdir), 'results')} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)


def _preprocess(config, workdir: str, dataset: str | None, manual_dir: str | None) -> None:
    from aujax.data import preprocess  # tensorflow-datasets and mediapipe only for this mode

    if not dataset or not manual_dir:
        raise ValueError("--mode=preprocess needs --dataset and --manual_dir (and --data_dir for the output)")
    preprocess.preprocess(dataset, manual_dir, os.path.expanduser(config.data.data_dir),
                          os.path.join(workdir, "results", "preprocess_report.csv"))
