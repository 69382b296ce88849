"""Explain AU decisions: relevance of every pixel for all 8 AU logits from one forward pass.

The canonical network (`canonize`) is run once with the composite's LRP layer functions (`rules`); `jax.vjp` keeps
that forward pass and its backward pass is `vmap`ped over the 8 output seeds (one-hot x logit for LRP, one-hot for
the gradient baselines), so the forward work and every rule denominator are shared by the 8 AUs.

Usage in a batch loop (canonize once, one compiled function per composite):

    canonical = canonize(variables)
    explain_fn = make_explain_fn("paper")
    logits, relevance = explain_fn(canonical, images)   # (n, 8), (8, n, 112, 112, 3)
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from aujax import facs, model
from aujax.lrp import composites as composites_lib
from aujax.lrp import rules
from aujax.lrp.canonize import block_names, canonize

STEM_STRIDES = 2  # aujax.model: stem_conv 7x7/2


class LinearLayer(NamedTuple):
    spec: rules.LayerSpec
    first: bool  # the layer that sees the pixels
    kernel: jax.Array
    bias: jax.Array


def _conv_layer(params: dict, strides: int, first: bool = False) -> LinearLayer:
    # Padding kernel // 2 as in aujax.model; every conv but the stem reads a ReLU output.
    spec = rules.conv_spec(strides, params["kernel"].shape[0] // 2, nonnegative_input=not first)
    return LinearLayer(spec, first, params["kernel"], params["bias"])


def linear_layers(canonical: dict) -> dict[str, LinearLayer]:
    """Every convolution and the head of the canonical network, by name ('stage1_block1/conv1', ...), in order."""
    layers = {"stem_conv": _conv_layer(canonical["stem_conv"], STEM_STRIDES, first=True)}
    for index, name in enumerate(block_names(canonical)):
        strides = model.stage_strides(*divmod(index, model.BLOCKS_PER_STAGE))
        block = canonical[name]
        layers[f"{name}/conv1"] = _conv_layer(block["conv1"], strides)
        layers[f"{name}/conv2"] = _conv_layer(block["conv2"], 1)
        if "proj_conv" in block:
            layers[f"{name}/proj_conv"] = _conv_layer(block["proj_conv"], strides)
    head = canonical["head"]
    layers["head"] = LinearLayer(rules.dense_spec(nonnegative_input=True), False, head["kernel"], head["bias"])
    return layers


def lrp_forward(canonical: dict, images: jax.Array, composite: composites_lib.Composite,
                probes: dict | None = None) -> tuple[jax.Array, dict]:
    """The canonical network with the composite's layer functions.

    images: (n, h, w, 3) float32 in [0, 1]. Returns logits (n, 8) and the activations at every tap point
    ('<layer>/in', '<layer>/out', '<block>/add/branch', '<block>/add/skip', '<block>/add/out', 'max_pool/…',
    'global_pool/…'). `probes` (zeros shaped like those activations) are added at the tap points, so the
    cotangent of a probe is the relevance passing that point.
    """
    layers = linear_layers(canonical)
    activations = {}

    def tap(name, x):
        if probes is not None:
            x = x + probes[name]
        activations[name] = x
        return x

    def linear(name, x):
        layer = layers[name]
        x = tap(f"{name}/in", x)
        rule = composite.linear_rule(layer.spec.kind, layer.first)
        if rule is None:
            z = rules.linear(layer.spec, x, layer.kernel, layer.bias)
        else:
            z = rules.lrp_linear(layer.spec, rule, x, layer.kernel, layer.bias)
        return tap(f"{name}/out", z)

    if composite.is_lrp:
        relu = rules.relu_pass
        add = functools.partial(rules.lrp_add, composite.sum.stabilizer)
        pool = functools.partial(rules.lrp_global_mean_pool, composite.sum.stabilizer)
    else:
        relu, add, pool = jax.nn.relu, jnp.add, rules.global_mean_pool

    x = relu(linear("stem_conv", images))
    x = tap("max_pool/out", model.max_pool(tap("max_pool/in", x)))
    for name in block_names(canonical):
        branch = linear(f"{name}/conv2", relu(linear(f"{name}/conv1", x)))
        skip = linear(f"{name}/proj_conv", x) if f"{name}/proj_conv" in layers else x
        total = add(tap(f"{name}/add/branch", branch), tap(f"{name}/add/skip", skip))
        x = relu(tap(f"{name}/add/out", total))
    pooled = tap("global_pool/out", pool(tap("global_pool/in", x)))
    return linear("head", pooled), activations


def output_seeds(logits: jax.Array, composite: composites_lib.Composite) -> jax.Array:
    """(8, n, 8): seed a is one-hot at AU a, times its logit for LRP composites."""
    one_hot = jnp.eye(logits.shape[-1], dtype=logits.dtype)[:, None, :]
    if composite.relevance_seed == "logit":
        return one_hot * logits[None]
    return jnp.broadcast_to(one_hot, (logits.shape[-1],) + logits.shape)


def explain_canonical(canonical: dict, images: jax.Array,
                      composite: composites_lib.Composite) -> tuple[jax.Array, jax.Array]:
    """Logits (n, 8) and relevance (8, n, h, w, 3) of `images` for the canonical network; jittable."""
    logits, backward = jax.vjp(lambda x: lrp_forward(canonical, x, composite)[0], images)
    (relevance,) = jax.vmap(backward)(output_seeds(logits, composite))
    if composite.times_input:
        relevance = relevance * images
    return logits, relevance


@functools.lru_cache(maxsize=None)
def make_explain_fn(composite: str = "paper", epsilon: float = composites_lib.DEFAULT_EPSILON):
    """A jitted `fn(canonical, images) -> (logits (n, 8), relevance (8, n, h, w, 3))` for a named composite.

    `canonical` comes from `canonize(variables)` (fold BatchNorm once, outside the batch loop). Cached, so every
    call with the same arguments returns the same compiled function.
    """
    resolved = composites_lib.get_composite(composite, epsilon=epsilon)
    return jax.jit(functools.partial(explain_canonical, composite=resolved))


def _as_model_input(images) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images of shape {images.shape} and dtype {images.dtype}: expected "
                         f"(n, {facs.IMAGE_SIZE}, {facs.IMAGE_SIZE}, 3) float32 in [0, 1] (uint8 images / 255)")
    return images.astype(jnp.float32)


def explain_with_logits(variables: dict, images: jax.Array, composite: str = "paper",
                        epsilon: float = composites_lib.DEFAULT_EPSILON) -> tuple[jax.Array, jax.Array]:
    """Logits (n, 8) and relevance (8, n, 112, 112, 3) float32 from one forward pass, AU axis in `facs.AU_IDS` order.

    variables: {'params', 'batch_stats'} of `aujax.model.ResNet18`; images: (n, 112, 112, 3) float32 in [0, 1];
    composite: one of `COMPOSITES`; epsilon: ε of the composite's ε-layers.
    """
    return make_explain_fn(composite, epsilon)(canonize(variables), _as_model_input(images))


def explain(variables: dict, images: jax.Array, composite: str = "paper",
            epsilon: float = composites_lib.DEFAULT_EPSILON) -> jax.Array:
    """Relevance (8, n, 112, 112, 3) float32 of `images` for the 8 AU logits (see `explain_with_logits`)."""
    return explain_with_logits(variables, images, composite, epsilon)[1]


def pixel_heatmaps(relevance):
    """(8, n, h, w, 3) relevance -> (8, n, h, w) pixel heatmaps: the sum over colour channels."""
    return relevance.sum(axis=-1)
