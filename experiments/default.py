"""`aujax.configs.default` (`--config=default`), here so that `--config=experiments/default.py` keeps working."""

from aujax.configs.default import get_config

__all__ = ["get_config"]
