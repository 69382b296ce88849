"""aujax command line: parses flags and the config, then calls the stages.

  python -m aujax.main                                   # the whole protocol on small synthetic data (CPU, ~5 min)
  python -m aujax.main --config=paper                    # the paper's protocol (a packaged config, or a file path)
  python -m aujax.main --mode=preprocess --dataset=ck_plus --manual_dir=... --data_dir=...

A run that fails ends with one line `aujax: error: ...` on stderr and exit status 1: a bad flag or config field, bad
data, a workdir in use by another run (`aujax.workdir_lock`) or on a full disk, Ctrl-C, a stop by request each say
what happened and what to do. An unexpected error says so in that line and names the log file that holds its
traceback: `<workdir>/logs/error-<time>-<pid>.log`, or the temp directory where the workdir cannot take it.

Installed, the `aujax` command is the same as `python -m aujax.main` (`run`).
"""

import contextlib
import logging as std_logging
import os
import re
import signal
import sys
import tempfile
import time
import traceback

import jax
from absl import app, flags, logging
from ml_collections.config_flags import config_flags, config_path

from aujax import configs, distributed, files, pipeline, rundir, workdir_lock

_CONFIG_OVERRIDE = re.compile(r"-{1,2}(?:no)?config\.([^=]+)")
_KNOWN_ERRORS = (*pipeline.USER_ERRORS, files.DiskFullError, workdir_lock.WorkdirInUseError)

flags.DEFINE_string("workdir", "workdir", "Directory for checkpoints and results.")
flags.DEFINE_enum("mode", "all", pipeline.MODES, "What to run: " + "; ".join(
    f"{m}: {d}" for m, d in pipeline.MODES.items()))
flags.DEFINE_string("train_data", None, "Dataset in the train role (CK+ in the paper): 'synthetic', a built "
                    "dataset name, or a .npz records file. Overrides config.data.train.")
flags.DEFINE_string("cv_data", None, "Dataset in the leave-one-subject-out role (Actor Study in the paper).")
flags.DEFINE_string("cross_data", None, "Dataset in the cross-domain role (UNBC-McMaster in the paper).")
flags.DEFINE_string("data_dir", None, "Where built (TFDS) datasets live. Overrides config.data.data_dir.")
flags.DEFINE_integer("epochs", None, "Epochs per fold. Overrides config.train.epochs.")
flags.DEFINE_integer("batch_size", None, "Global batch size (divisible by the device count).")
flags.DEFINE_integer("seed", None, "Seed for initialisation and data order. Overrides config.seed.")
flags.DEFINE_string("model", None, "Architecture: resnet18 (default), resnet34, resnet50, vgg11_bn or mobilenet_v2. "
                    "Overrides config.model.name.")
flags.DEFINE_string("width", None, "Model stage widths: full, reduced, tiny or a,b,c,d. Overrides "
                    "config.model.widths.")
flags.DEFINE_float("threshold", None, "Decision threshold on the sigmoid outputs. Overrides config.model.threshold.")
flags.DEFINE_string("composite", None, "Main LRP composite (paper, epsilon_alpha2_beta1_flat, epsilon_gamma_box, "
                    "all_z, all_epsilon, gradient, gradient_x_input). Overrides config.explain.composite.")
flags.DEFINE_string("image", None, "--mode=explain_image: what to explain: a photo, a folder of images, a glob "
                    "('photos/*.jpg') or a video.")
flags.DEFINE_float("fps", None, "--mode=explain_image with a video: frames explained per second (default 2).")
flags.DEFINE_string("checkpoint", None, "--mode=explain_image: an orbax checkpoint directory (such as "
                    "<workdir>/checkpoints/fold_03/latest) instead of the best fold of --workdir.")
flags.DEFINE_string("dataset", None, "--mode=preprocess: the dataset to build.")
flags.DEFINE_string("heatmaps", None, "--mode=score: heatmaps made elsewhere, .npy or .npz, (n, h, w) for one AU or "
                    "(n, A, h, w) for the AUs of --config.aus.")
flags.DEFINE_string("data", None, "--mode=score: the images the heatmaps explain: face records or a folder of "
                    "images. --mode=explain_model: the dataset to explain the model on (anything --cv_data accepts).")
flags.DEFINE_string("model_file", None, "--mode=explain_model, explain_image: a model trained elsewhere, as an ONNX "
                    "file.")
flags.DEFINE_string("model_card", None, "--mode=explain_model, explain_image: the model's card (docs/onnx.md), a JSON "
                    "file or the JSON object itself; default: <model_file without .onnx>.card.json.")
flags.DEFINE_string("labels", None, "--mode=score: optional .npy (n, A) of 0/1 AU labels.")
flags.DEFINE_string("predictions", None, "--mode=score: optional .npy (n, A) of 0/1 decisions or probabilities.")
flags.DEFINE_multi_string("preprocess_option", None, "--mode=preprocess: a builder option as name=value, "
                          "repeatable (landmarks=dataset, label_frames=all, exclude_subjects=16, margin=0.3, ...).")
flags.DEFINE_string("manual_dir", None, "--mode=preprocess: the dataset's files in their distribution layout.")
flags.DEFINE_enum("distributed", "auto", distributed.MODES, "Multi-host runs: 'auto' starts JAX's distributed "
                  "runtime when --coordinator_address/--num_processes/--process_id are given or SLURM (srun, >1 task), "
                  "Open MPI or GKE TPU variables say the job has several processes; 'on' always (a Cloud TPU VM "
                  "slice); 'off' never.")
flags.DEFINE_string("coordinator_address", None, "Multi-host runs: host:port of process 0, the same on every process.")
flags.DEFINE_integer("num_processes", None, "Multi-host runs: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host runs: this process's index, 0 .. num_processes-1.")
flags.DEFINE_list("local_device_ids", None, "Multi-host runs: the local devices this process drives (e.g. 0,1); "
                  "default all.")

_OVERRIDES = {  # flag -> config field
    "train_data": "data.train", "cv_data": "data.cv", "cross_data": "data.cross", "data_dir": "data.data_dir",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "seed", "model": "model.name",
    "width": "model.widths", "threshold": "model.threshold", "composite": "explain.composite",
}


def _config_with_flags():
    config = flags.FLAGS.config
    with config.unlocked():
        for flag, field in _OVERRIDES.items():
            value = getattr(flags.FLAGS, flag)
            if value is not None:
                *parents, leaf = field.split(".")
                node = config
                for p in parents:
                    node = node[p]
                node[leaf] = value
    return config


def _parse_command_line(argv: list[str]) -> list[str]:
    """app.run's flag parser: defines --config, then parses every flag; a bad one ends the run with one error line.

    ml_collections reads the config file and its `--config.<field>` overrides (from sys.argv) as soon as --config is
    defined, or parsed where the command line names a file, and raises a bare AttributeError for a field the config
    lacks: the overrides are checked first."""
    try:
        argv = _with_config_file(flags.FLAGS.read_flags_from_files(argv, force_gnu=False))
        _check_config_overrides(argv)
        config_flags.DEFINE_config_file("config", configs.path("default"), "Experiment config: a packaged one ("
                                        f"{', '.join(configs.NAMES)}) or a config file (override fields with "
                                        "--config.train.epochs=3 and the like).", lock_config=True)
        _list_flags_in_help()
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))


def _list_flags_in_help() -> None:
    """Makes --help list this module's flags under the `aujax` command too: absl lists those of the module that
    sys.argv[0] names, aujax/main.py under `python -m aujax.main` but the console script under `aujax`."""
    for flag in flags.FLAGS.get_key_flags_for_module(__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def _check_config_overrides(argv: list[str]) -> None:
    """flags.Error for a config file that cannot be read, or an override `--config.<field>` of a field it lacks."""
    path = _config_file(argv)
    config = config_flags.ConfigFileFlagParser(name="config").parse(path)
    try:
        sections = list(config.keys())  # the parser defers a file's read error to the config's first use
    except OSError as e:
        raise flags.Error(f"--config={path}: cannot read the config file ({str(e).splitlines()[-1].strip()})") from None
    for field in (m.group(1) for m in map(_CONFIG_OVERRIDE.match, argv) if m):
        try:
            config_path.get_type(field, config)
        except (AttributeError, KeyError, IndexError):
            raise flags.Error(_unknown_field_message(field, config, sections)) from None


def _config_file(argv: list[str]) -> str:
    """The config file that `--config=FILE` or `--config FILE` names, else the default."""
    for arg, following in zip(argv, [*argv[1:], None]):
        if arg in ("--config", "-config") and following is not None:
            return following
        if match := re.match(r"-{1,2}config=(.*)", arg):
            return match.group(1)
    return configs.path("default")


def _with_config_file(argv: list[str]) -> list[str]:
    """`argv` with a packaged config's name after --config (`--config=paper`) replaced by its file."""
    resolved, names_value = [], False
    for arg in argv:
        if names_value:
            arg = configs.resolve(arg)
        elif match := re.fullmatch(r"(-{1,2}config=)(.*)", arg):
            arg = match.group(1) + configs.resolve(match.group(2))
        names_value = arg in ("--config", "-config")
        resolved.append(arg)
    return resolved


def _unknown_field_message(field: str, config, sections: list[str]) -> str:
    """'--config.train.epoch: no such field (config.train has epochs, ...); the top-level sections are ...'."""
    parent = field.rpartition(".")[0]
    try:
        siblings = config_path.get_value(parent, config).keys() if parent else None
    except (AttributeError, KeyError, IndexError):  # the parent is missing too
        siblings = None
    where = f" (config.{parent} has {', '.join(siblings)})" if siblings else ""
    return f"--config.{field}: no such field{where}; the top-level sections are {', '.join(sections)}"


def _show_only_aujax_info() -> None:
    """INFO lines from aujax only (progress); libraries such as orbax speak at WARNING and above."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    logging.get_absl_logger().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or record.pathname.startswith(package_dir))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    _show_only_aujax_info()
    FLAGS = flags.FLAGS
    try:
        multi_host = distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                            FLAGS.local_device_ids, mode=FLAGS.distributed)
        with _workdir_lock(FLAGS.workdir, multi_host):
            pipeline.run(FLAGS.mode, _config_with_flags(), FLAGS.workdir, dataset=FLAGS.dataset,
                         manual_dir=FLAGS.manual_dir, image=FLAGS.image, checkpoint=FLAGS.checkpoint, fps=FLAGS.fps,
                         preprocess_options=pipeline.parse_options(FLAGS.preprocess_option),
                         score_inputs={"heatmaps": FLAGS.heatmaps, "data": FLAGS.data, "labels": FLAGS.labels,
                                       "predictions": FLAGS.predictions},
                         model_inputs={"model_file": FLAGS.model_file, "model_card": FLAGS.model_card,
                                       "data": FLAGS.data})
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C); what was completely written is kept: run the same command again to resume")
    except Exception as e:
        _fail(_error_line(e, FLAGS.workdir))


def _workdir_lock(workdir: str, multi_host: bool):
    """The workdir's lock; in a multi-host run process 0 alone takes it (the processes share the workdir)."""
    if multi_host and jax.process_index() != 0:
        return contextlib.nullcontext()
    return workdir_lock.held(workdir)


def _error_line(error: Exception, workdir: str) -> str:
    """What a run that failed with `error` says: known conditions their own message; an unexpected error where its
    traceback was written."""
    if files.is_disk_full(error) and not isinstance(error, files.DiskFullError):  # raised where no size is known
        return files.disk_full_message(getattr(error, "filename", None) or workdir, None)
    if isinstance(error, _KNOWN_ERRORS):
        return str(error)
    first_line = str(error).strip().partition("\n")[0]
    return (f"unexpected {type(error).__name__}: {first_line} (the traceback is in {_write_traceback(error, workdir)}; "
            "please report it)")


def _write_traceback(error: Exception, workdir: str) -> str:
    """Write the command line and the traceback of `error` to `<workdir>/logs/error-<time>-<pid>.log`, or to the temp
    directory where the workdir cannot take it; returns the file's path."""
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = " ".join(sys.argv) + "\n\n" + "".join(traceback.format_exception(error))
    for path in (os.path.join(rundir.RunDir(workdir).logs, name), os.path.join(tempfile.gettempdir(), f"aujax-{name}")):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    sys.stderr.write(text)  # no file could take it
    return "the lines above"


def _fail(message: str):
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a Ctrl-C while exiting ends the process at once, with no traceback
    print(f"aujax: error: {message}", file=sys.stderr)
    sys.exit(1)


def run() -> None:
    """The `aujax` command: parse the command line and run `main`."""
    app.run(main, flags_parser=_parse_command_line)


if __name__ == "__main__":
    run()
