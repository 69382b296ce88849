"""Small ResNet-18 variables with non-trivial BatchNorm statistics, shared by the LRP tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from aujax import model

LRP_WIDTHS = (4, 8, 8, 8)


@functools.lru_cache(maxsize=None)
def _variable_shapes(widths: tuple):
    """The variable tree of `model.init_variables`, as shapes only (flax's initialisers compile slowly on CPU)."""
    network = model.create_model(widths)
    return jax.eval_shape(lambda: model.init_variables(network, jax.random.key(0)))


def randomized_variables(seed: int = 0, with_biases: bool = True, widths=LRP_WIDTHS) -> dict:
    """Variables shaped like `model.init_variables` with random weights (He scaling) and BatchNorm scale/var, and
    with random BN mean/beta and head bias when `with_biases`.

    Without biases, BN has mean 0 and beta 0, so folding it creates no bias: the network is then bias-free and
    LRP-0 must conserve relevance exactly.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        key, shape = path[-1].key, leaf.shape
        if key == "kernel":
            values = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif key == "scale":
            values = rng.uniform(0.5, 1.5, shape)
        elif key == "var":
            values = rng.uniform(0.3, 2.0, shape)
        elif key in ("mean", "bias") and with_biases:
            values = rng.normal(0.0, 0.3 if key == "mean" else 0.2, shape)
        else:
            values = np.zeros(shape)
        return jnp.asarray(values, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, _variable_shapes(tuple(widths)))


def sample_images(n: int, seed: int = 1) -> jax.Array:
    """(n, 112, 112, 3) float32 uniform in [0, 1]."""
    return jnp.asarray(np.random.default_rng(seed).uniform(0.0, 1.0, (n, 112, 112, 3)), jnp.float32)
