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

from aujax import distributed, pipeline

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
flags.DEFINE_string("composite", None, "Main LRP composite (paper, epsilon_alpha2_beta1_flat, epsilon_gamma_box, "
                    "all_z, all_epsilon, gradient, gradient_x_input). Overrides config.explain.composite.")
flags.DEFINE_string("image", None, "--mode=explain_image: the photo to explain.")
flags.DEFINE_string("checkpoint", None, "--mode=explain_image: an orbax checkpoint directory (such as "
                    "<workdir>/checkpoints/fold_03/latest) instead of the best fold of --workdir.")
flags.DEFINE_string("dataset", None, "--mode=preprocess: the dataset to build.")
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
    "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "seed", "width": "model.widths",
    "threshold": "model.threshold", "composite": "explain.composite",
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
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               FLAGS.local_device_ids, mode=FLAGS.distributed)
        pipeline.run(FLAGS.mode, _config_with_flags(), FLAGS.workdir, dataset=FLAGS.dataset,
                     manual_dir=FLAGS.manual_dir, image=FLAGS.image, checkpoint=FLAGS.checkpoint,
                     preprocess_options=pipeline.parse_options(FLAGS.preprocess_option))
    except pipeline.USER_ERRORS as e:
        logging.error("%s", e)
        print(f"aujax: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
