"""`aujax.configs.paper` (`--config=paper`), here so that `--config=experiments/paper.py` keeps working."""

from aujax.configs.paper import get_config

__all__ = ["get_config"]
