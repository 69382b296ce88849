"""The experiment configs that ship with aujax, each a module with `get_config()` (ml_collections).

  default  the default CPU job: the whole protocol on small synthetic data
  paper    the paper's protocol (Rieger et al. 2020): paper-sized synthetic data, or real data via flags
  bias     the bias-detection experiment (experiments/bias_experiment.py runs both arms)

`--config=paper` names one of them; any other value is a config file's path, as ml_collections takes it.
"""

import os

NAMES = ("default", "paper", "bias")


def path(name: str) -> str:
    """The file of the packaged config `name` (one of `NAMES`)."""
    if name not in NAMES:
        raise ValueError(f"unknown packaged config {name!r}; packaged: {', '.join(NAMES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")


def resolve(value: str) -> str:
    """The config file that a `--config` value names: a packaged config's name gives its file, anything else (a
    path, optionally with ml_collections' `:argument`) is returned as it is."""
    return path(value) if value in NAMES else value
