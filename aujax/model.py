"""Model stage: a parameter-reduced ResNet-18 for 112x112 face crops with 8 AU logits.

The layers are kept explicit and named so that the LRP stage can run the very same parameters through its own
versions of each layer (`aujax.lrp`):

  stem_conv 7x7/2 (no bias) -> stem_bn -> relu -> max pool 3x3/2
  stage{1..4}_block{1,2}: BasicBlock (conv1 3x3 -> bn1 -> relu -> conv2 3x3 -> bn2, plus a shortcut that is the
      identity or proj_conv 1x1 -> proj_bn when the shape changes) -> residual add -> relu
  global average pooling -> head (dense, with bias) -> 8 logits

Padding is symmetric as in torchvision's resnet18 (3 for the stem, 1 for 3x3 convolutions and the max pool), so the
same weights give the same outputs in a torch model built to match. At 112x112 the stages run at 28, 14, 7 and 4
pixels. Probabilities are `sigmoid(logits)`; a decision is `probability >= threshold` (0.5 by default).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aujax import facs

WIDTH_PRESETS = {
    "full": (64, 128, 256, 512),
    "reduced": (32, 64, 128, 256),
    "tiny": (16, 32, 64, 128),
}
BLOCKS_PER_STAGE = 2
BATCH_NORM_MOMENTUM = 0.9  # torch's 0.1: running statistics settle within a few hundred steps
BATCH_NORM_EPSILON = 1e-5


def stage_strides(stage: int, block: int) -> int:
    """Stride of the first convolution of `block` in `stage` (both 0-based): 2 where a stage after the first begins."""
    return 2 if stage > 0 and block == 0 else 1


def block_name(stage: int, block: int) -> str:
    return f"stage{stage + 1}_block{block + 1}"


def _conv(features: int, kernel: int, strides: int, name: str) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                   use_bias=False, name=name)


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                        name=name)


def max_pool(x: jax.Array) -> jax.Array:
    """3x3 max pooling, stride 2, padding 1 (padded cells never win)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class BasicBlock(nn.Module):
    features: int
    strides: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = _conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(_batch_norm(train, "bn1")(y))
        y = _conv(self.features, 3, 1, "conv2")(y)
        y = _batch_norm(train, "bn2")(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = _batch_norm(train, "proj_bn")(_conv(self.features, 1, self.strides, "proj_conv")(x))
        return nn.relu(y + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 with configurable stage widths; images (n, 112, 112, 3) float32 in [0, 1] -> logits (n, 8)."""

    widths: Sequence[int] = WIDTH_PRESETS["full"]
    num_outputs: int = facs.NUM_AUS

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        x = _conv(self.widths[0], 7, 2, "stem_conv")(images)
        x = max_pool(nn.relu(_batch_norm(train, "stem_bn")(x)))
        for stage, features in enumerate(self.widths):
            for block in range(BLOCKS_PER_STAGE):
                x = BasicBlock(features, stage_strides(stage, block), name=block_name(stage, block))(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_outputs, name="head")(x)


def resolve_widths(widths) -> tuple[int, ...]:
    """Stage widths from a preset name ('full', 'reduced', 'tiny'), a comma-separated string or a sequence of 4 ints."""
    if isinstance(widths, str):
        if widths in WIDTH_PRESETS:
            return WIDTH_PRESETS[widths]
        try:
            widths = [int(w) for w in widths.split(",")]
        except ValueError:
            raise ValueError(f"model width {widths!r}: expected one of {sorted(WIDTH_PRESETS)} "
                             "or 4 comma-separated integers such as 32,64,128,256") from None
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"model widths {widths}: expected 4 positive integers, one per stage")
    return widths


def create_model(widths) -> ResNet18:
    return ResNet18(widths=resolve_widths(widths))


def init_variables(model: ResNet18, rng: jax.Array) -> dict:
    """Fresh `{'params': ..., 'batch_stats': ...}` for `model` (a pytree of float32 arrays)."""
    dummy = jnp.zeros((1, facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3), jnp.float32)
    return dict(model.init(rng, dummy, train=False))


def parameter_count(params) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
