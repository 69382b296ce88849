"""Canonization: the trained ResNet-18 rewritten as convolutions with biases, ReLUs, pools and additions.

Batch normalisation in eval mode is an affine map per channel, y = (z - mean) * f + beta with
f = scale / sqrt(var + eps), so it folds exactly into the convolution before it:

    kernel' = kernel * f  (per output channel),   bias' = beta - mean * f

The canonical parameters are a pytree mirroring `aujax.model.ResNet18`:

    {'stem_conv': {'kernel', 'bias'},
     'stage1_block1': {'conv1': {...}, 'conv2': {...}[, 'proj_conv': {...}]}, ..., 'stage4_block2': {...},
     'head': {'kernel', 'bias'}}
"""

import jax
import jax.numpy as jnp

from aujax import model

_CONV_TO_BATCH_NORM = {"conv1": "bn1", "conv2": "bn2", "proj_conv": "proj_bn"}


def fold_batch_norm(kernel: jax.Array, scale: jax.Array, beta: jax.Array, mean: jax.Array, var: jax.Array,
                    epsilon: float = model.BATCH_NORM_EPSILON) -> dict:
    """A bias-free conv kernel (kh, kw, c_in, c_out) followed by eval-mode BatchNorm (each (c_out,)) as one conv."""
    factor = scale * jax.lax.rsqrt(var + epsilon)
    return {"kernel": kernel * factor, "bias": beta - mean * factor}


def _fold(params: dict, stats: dict, conv: str, batch_norm: str) -> dict:
    return fold_batch_norm(params[conv]["kernel"], params[batch_norm]["scale"], params[batch_norm]["bias"],
                           stats[batch_norm]["mean"], stats[batch_norm]["var"])


def block_names(params: dict) -> list[str]:
    """Names of the residual blocks in forward order, e.g. ['stage1_block1', ..., 'stage4_block2']."""
    return [model.block_name(stage, block) for stage in range(4) for block in range(model.BLOCKS_PER_STAGE)
            if model.block_name(stage, block) in params]


@jax.jit
def canonize(variables: dict) -> dict:
    """Fold every BatchNorm of `variables` ({'params', 'batch_stats'} of `model.ResNet18`) into its convolution.

    Jitted: one small compiled program per model width instead of dozens of eager operations.
    """
    try:
        params, stats = variables["params"], variables["batch_stats"]
        canonical = {"stem_conv": _fold(params, stats, "stem_conv", "stem_bn"),
                     "head": {"kernel": params["head"]["kernel"], "bias": params["head"]["bias"]}}
        for name in block_names(params):
            canonical[name] = {conv: _fold(params[name], stats[name], conv, batch_norm)
                               for conv, batch_norm in _CONV_TO_BATCH_NORM.items() if conv in params[name]}
    except KeyError as missing:
        raise ValueError(f"variables lack {missing}: expected {{'params', 'batch_stats'}} of aujax.model.ResNet18 "
                         "(from model.init_variables or a training checkpoint)") from None
    if len(block_names(params)) != 4 * model.BLOCKS_PER_STAGE:
        raise ValueError(f"variables hold blocks {block_names(params)}: expected the "
                         f"{4 * model.BLOCKS_PER_STAGE} residual blocks of aujax.model.ResNet18")
    return canonical


def without_biases(canonical: dict) -> dict:
    """`canonical` with every bias set to zero (for conservation checks: no relevance is absorbed by biases)."""
    return jax.tree_util.tree_map_with_path(
            lambda path, leaf: jnp.zeros_like(leaf) if path[-1].key == "bias" else leaf, canonical)
