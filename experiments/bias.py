"""`aujax.configs.bias` (`--config=bias`), here so that `--config=experiments/bias.py` keeps working."""

from aujax.configs.bias import get_config

__all__ = ["get_config"]
