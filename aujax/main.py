"""aujax command line: parses flags and the config, then calls the stages.

  python -m aujax.main                                   # the whole protocol on small synthetic data (CPU, ~5 min)
  python -m aujax.main --config=experiments/paper.py     # the paper's protocol
  python -m aujax.main --mode=preprocess --dataset=ck_plus --manual_dir=... --data_dir=...
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from aujax import pipeline

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                               "default.py")

config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file (override fields with "
                                "--config.train.epochs=3 and the like).", lock_config=True)
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
flags.DEFINE_string("width", None, "Model stage widths: full, reduced, tiny or a,b,c,d. Overrides "
                    "config.model.widths.")
flags.DEFINE_float("threshold", None, "Decision threshold on the sigmoid outputs. Overrides config.model.threshold.")
flags.DEFINE_string("dataset", None, "--mode=preprocess: the dataset to build.")
flags.DEFINE_string("manual_dir", None, "--mode=preprocess: the dataset's files in their distribution layout.")

_OVERRIDES = {  # flag -> config field
    "train_data": "data.train", "cv_data": "data.cv", "cross_data": "data.cross", "data_dir": "data.data_dir",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "seed", "width": "model.widths",
    "threshold": "model.threshold",
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
        pipeline.run(FLAGS.mode, _config_with_flags(), FLAGS.workdir, dataset=FLAGS.dataset,
                     manual_dir=FLAGS.manual_dir)
    except pipeline.USER_ERRORS as e:
        logging.error("%s", e)
        print(f"aujax: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
