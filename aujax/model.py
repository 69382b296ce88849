"""Model stage: the architectures of aujax, each described once as an `aujax.graph.Graph`, and one Flax module that
trains any graph.

  resnet18       stem_conv 7x7/2 (no bias) -> stem_bn -> relu -> max pool 3x3/2, stage{1..4}_block{1,2}: BasicBlock
                 (conv1 3x3 -> bn1 -> relu -> conv2 3x3 -> bn2, plus a shortcut that is the identity or
                 proj_conv 1x1 -> proj_bn when the shape changes) -> residual add -> relu, global average pooling ->
                 head (dense, with bias). At 112x112 the stages run at 28, 14, 7 and 4 pixels.
  resnet34       the same with BasicBlocks [3, 4, 6, 3]
  resnet50       Bottleneck blocks [3, 4, 6, 3] (conv1 1x1 -> conv2 3x3, stride here as torchvision -> conv3 1x1 to
                 4x the stage width), the shortcut projected where the shape changes
  vgg11_bn       conv 3x3 (with bias, as torchvision) + BN + ReLU stages of [1, 1, 2, 2, 2] convolutions, each
                 followed by max pool 2x2/2, then
                 global average pooling -> fc1 -> relu -> fc2 -> relu -> head (fc widths 8x the last stage's)
  mobilenet_v2   stem conv 3x3/2 + BN + ReLU6, inverted residual stages (1x1 expansion by t, depthwise 3x3, linear
                 1x1 projection; residual add where shape is kept) as torchvision, last conv 1x1 + BN + ReLU6,
                 global average pooling -> head

Padding is symmetric as in torchvision (so the same weights give the same outputs in a torch model built to match).
The graphs end at the logits; probabilities are `sigmoid(logits)`, a decision is `probability >= threshold`.
The Flax module (`GraphModel`) creates `nn.Conv`, `nn.BatchNorm` and `nn.Dense` named by the node names, nested by
their '/' scopes, so its variables have the layout `aujax.graph` describes (for resnet18 the names and nesting of
every checkpoint written before the graph existed).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aujax import facs
from aujax import graph as graph_lib
from aujax.graph import (INPUT, Add, BatchNorm, Clip, Conv, Dense, GlobalAvgPool, Graph, MaxPool, Relu)

BATCH_NORM_MOMENTUM = 0.9  # torch's 0.1: running statistics settle within a few hundred steps
BATCH_NORM_EPSILON = 1e-5
BLOCKS_PER_STAGE = 2  # resnet18
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}
VGG11_CONVS = (1, 1, 2, 2, 2)
MOBILENET_V2_STAGES = ((1, 1, 1), (6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2), (6, 1, 1))  # (t, n, s)
# Per architecture, the widths at full size: the stage widths (ResNet-50: of the bottlenecks, 4x at the output),
# VGG's five conv stages, MobileNetV2's stem, seven stages and last conv.
FULL_WIDTHS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (64, 128, 256, 512),
    "vgg11_bn": (64, 128, 256, 512, 512),
    "mobilenet_v2": (32, 16, 24, 32, 64, 96, 160, 320, 1280),
}
ARCHITECTURES = tuple(FULL_WIDTHS)
PRESET_DIVISORS = {"full": 1, "reduced": 2, "tiny": 4}
WIDTH_PRESETS = {preset: tuple(w // divisor for w in FULL_WIDTHS["resnet18"])
                 for preset, divisor in PRESET_DIVISORS.items()}  # resnet18's: tiny is 16-32-64-128
# Computation dtypes (config.model.dtype, config.explain.dtype); parameters and batch statistics are float32 in both
DTYPES = ("float32", "bfloat16")


def _architecture(name: str) -> str:
    if name not in FULL_WIDTHS:
        raise ValueError(f"model name {name!r} (--model, config.model.name): expected one of "
                         f"{', '.join(ARCHITECTURES)}")
    return name


def check_dtype(name: str, flag: str = "--config.model.dtype") -> str:
    """`name` if it is a computation dtype (`DTYPES`); ValueError naming `flag` and the choices otherwise."""
    if name not in DTYPES:
        raise ValueError(f"{flag}={name!r}: expected one of {', '.join(DTYPES)}")
    return name


def resolve_widths(widths, name: str = "resnet18") -> tuple[int, ...]:
    """The widths of architecture `name` from a preset ('full', 'reduced', 'tiny': the full widths divided by 1, 2,
    4), a comma-separated string or a sequence of ints (4 for the ResNets, 5 for vgg11_bn, 9 for mobilenet_v2)."""
    count = len(FULL_WIDTHS[_architecture(name)])
    if isinstance(widths, str):
        if widths in PRESET_DIVISORS:
            return tuple(max(1, w // PRESET_DIVISORS[widths]) for w in FULL_WIDTHS[name])
        try:
            widths = [int(w) for w in widths.split(",")]
        except ValueError:
            raise ValueError(f"model width {widths!r}: expected one of {sorted(PRESET_DIVISORS)} or {count} "
                             f"comma-separated integers such as {','.join(str(w // 2) for w in FULL_WIDTHS[name])}"
                             ) from None
    widths = tuple(int(w) for w in widths)
    if len(widths) != count or min(widths) < 1:
        raise ValueError(f"model widths {widths}: expected {count} positive integers for {name}")
    return widths


# ---------------------------------------------------------------------------------------------------------------
# The architectures as graphs


def stage_strides(stage: int, block: int) -> int:
    """Stride of the first convolution of `block` in `stage` (both 0-based): 2 where a stage after the first begins."""
    return 2 if stage > 0 and block == 0 else 1


def block_name(stage: int, block: int) -> str:
    return f"stage{stage + 1}_block{block + 1}"


class _Builder:
    """Appends nodes; each method returns the name of the node it added."""

    def __init__(self):
        self.nodes = []

    def add(self, node) -> str:
        self.nodes.append(node)
        return node.name

    def conv_bn(self, x: str, name: str, bn: str, features: int, kernel: int, strides: int = 1,
                groups: int = 1, use_bias: bool = False) -> str:
        pad = kernel // 2
        x = self.add(Conv(name, (x,), features, (kernel, kernel), (strides, strides), ((pad, pad), (pad, pad)),
                          groups=groups, use_bias=use_bias))
        return self.add(BatchNorm(bn, (x,), BATCH_NORM_EPSILON))

    def relu(self, x: str, name: str, six: bool = False) -> str:
        return self.add(Clip(name, (x,), 0.0, 6.0) if six else Relu(name, (x,)))

    def head(self, x: str, num_outputs: int) -> Graph:
        x = self.add(GlobalAvgPool("global_pool", (x,)))
        return self.graph(self.add(Dense("head", (x,), num_outputs)))

    def graph(self, output: str) -> Graph:
        return Graph(tuple(self.nodes), output)


def _basic_block(b: _Builder, x: str, name: str, features: int, strides: int, c_in: int) -> str:
    y = b.relu(b.conv_bn(x, f"{name}/conv1", f"{name}/bn1", features, 3, strides), f"{name}/relu1")
    y = b.conv_bn(y, f"{name}/conv2", f"{name}/bn2", features, 3)
    if strides != 1 or c_in != features:
        x = b.conv_bn(x, f"{name}/proj_conv", f"{name}/proj_bn", features, 1, strides)
    return b.relu(b.add(Add(f"{name}/add", (y, x))), f"{name}/relu")


def _bottleneck(b: _Builder, x: str, name: str, features: int, strides: int, c_in: int) -> str:
    y = b.relu(b.conv_bn(x, f"{name}/conv1", f"{name}/bn1", features, 1), f"{name}/relu1")
    y = b.relu(b.conv_bn(y, f"{name}/conv2", f"{name}/bn2", features, 3, strides), f"{name}/relu2")
    y = b.conv_bn(y, f"{name}/conv3", f"{name}/bn3", 4 * features, 1)
    if strides != 1 or c_in != 4 * features:
        x = b.conv_bn(x, f"{name}/proj_conv", f"{name}/proj_bn", 4 * features, 1, strides)
    return b.relu(b.add(Add(f"{name}/add", (y, x))), f"{name}/relu")


def resnet_graph(name: str, widths: Sequence[int], num_outputs: int) -> Graph:
    """ResNet-18/34 (BasicBlock) or ResNet-50 (Bottleneck) with stage widths `widths`."""
    b = _Builder()
    x = b.relu(b.conv_bn(INPUT, "stem_conv", "stem_bn", widths[0], 7, 2), "stem_relu")
    x = b.add(MaxPool("max_pool", (x,), (3, 3), (2, 2), ((1, 1), (1, 1))))
    block, expansion = (_bottleneck, 4) if name == "resnet50" else (_basic_block, 1)
    c_in = widths[0]
    for stage, (features, blocks) in enumerate(zip(widths, RESNET_BLOCKS[name])):
        for index in range(blocks):
            x = block(b, x, block_name(stage, index), features, stage_strides(stage, index), c_in)
            c_in = expansion * features
    return b.head(x, num_outputs)


def vgg11_bn_graph(widths: Sequence[int], num_outputs: int) -> Graph:
    b = _Builder()
    x = INPUT
    for stage, (features, convs) in enumerate(zip(widths, VGG11_CONVS), start=1):
        for index in range(1, convs + 1):
            prefix = f"stage{stage}/"
            x = b.relu(b.conv_bn(x, f"{prefix}conv{index}", f"{prefix}bn{index}", features, 3, use_bias=True),
                       f"{prefix}relu{index}")
        x = b.add(MaxPool(f"stage{stage}/max_pool", (x,), (2, 2), (2, 2)))
    x = b.add(GlobalAvgPool("global_pool", (x,)))
    for index in (1, 2):
        x = b.relu(b.add(Dense(f"fc{index}", (x,), 8 * widths[-1])), f"fc{index}_relu")
    return b.graph(b.add(Dense("head", (x,), num_outputs)))


def mobilenet_v2_graph(widths: Sequence[int], num_outputs: int) -> Graph:
    b = _Builder()
    x = b.relu(b.conv_bn(INPUT, "stem_conv", "stem_bn", widths[0], 3, 2), "stem_relu", six=True)
    c_in = widths[0]
    for stage, ((expansion, blocks, strides), features) in enumerate(zip(MOBILENET_V2_STAGES, widths[1:-1])):
        for index in range(blocks):
            name, stride = block_name(stage, index), strides if index == 0 else 1
            hidden = c_in * expansion
            y = x
            if expansion != 1:
                y = b.relu(b.conv_bn(y, f"{name}/expand_conv", f"{name}/expand_bn", hidden, 1), f"{name}/expand_relu",
                           six=True)
            y = b.relu(b.conv_bn(y, f"{name}/depthwise_conv", f"{name}/depthwise_bn", hidden, 3, stride,
                                 groups=hidden), f"{name}/depthwise_relu", six=True)
            y = b.conv_bn(y, f"{name}/project_conv", f"{name}/project_bn", features, 1)
            x = b.add(Add(f"{name}/add", (y, x))) if stride == 1 and c_in == features else y
            c_in = features
    x = b.relu(b.conv_bn(x, "last_conv", "last_bn", widths[-1], 1), "last_relu", six=True)
    return b.head(x, num_outputs)


def create_graph(name: str = "resnet18", widths="full", num_outputs: int = len(facs.PAIN_AUS)) -> Graph:
    """The graph of architecture `name` (one of `ARCHITECTURES`) at `widths` (see `resolve_widths`), ending in
    `num_outputs` logits."""
    widths = resolve_widths(widths, name)
    if name in RESNET_BLOCKS:
        return resnet_graph(name, widths, num_outputs)
    if name == "vgg11_bn":
        return vgg11_bn_graph(widths, num_outputs)
    return mobilenet_v2_graph(widths, num_outputs)


def _kernel_width(params: dict, name: str) -> int:
    return int(graph_lib.lookup(params, name)["kernel"].shape[-1])


def graph_of_variables(variables: dict) -> Graph:
    """The graph of the aujax architecture whose `{'params', 'batch_stats'}` these are (the widths and outputs read
    from the parameter shapes); ValueError where they fit none."""
    params = variables.get("params", {}) if isinstance(variables, dict) else {}
    blocks = tuple(sum(block_name(stage, index) in params for index in range(8)) for stage in range(4))
    try:
        if "stage1_block1" in params and "depthwise_conv" in params["stage1_block1"]:
            name = "mobilenet_v2"
            widths = [_kernel_width(params, "stem_conv")]
            widths += [_kernel_width(params, f"{block_name(stage, 0)}/project_conv") for stage in range(7)]
            widths.append(_kernel_width(params, "last_conv"))
        elif "stage1" in params:
            name = "vgg11_bn"
            widths = [_kernel_width(params, f"stage{stage}/conv1") for stage in range(1, 6)]
        else:
            name = "resnet50" if "conv3" in params.get("stage1_block1", {}) else \
                next(n for n, count in RESNET_BLOCKS.items() if count == blocks)
            widths = [_kernel_width(params, f"{block_name(stage, 0)}/conv1") for stage in range(4)]
        graph = create_graph(name, widths, _kernel_width(params, "head"))
    except (KeyError, TypeError, StopIteration, ValueError):
        graph = None
    expected = None if graph is None else jax.eval_shape(lambda: init_variables(GraphModel(graph), jax.random.key(0)))
    if expected is None or jax.tree_util.tree_structure(expected["params"]) != \
            jax.tree_util.tree_structure(params) or any(
            e.shape != p.shape for e, p in zip(jax.tree_util.tree_leaves(expected["params"]),
                                               jax.tree_util.tree_leaves(params))):
        raise ValueError("variables fit none of aujax's architectures "
                         f"({', '.join(ARCHITECTURES)}): pass the graph they belong to (graph=...)")
    return graph


# ---------------------------------------------------------------------------------------------------------------
# Training: one Flax module for any graph


class _Affine(nn.Module):
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale, shift = self.param("scale", nn.initializers.ones, (c,)), self.param("shift", nn.initializers.zeros, (c,))
        if self.dtype is not None:
            x, scale, shift = x.astype(self.dtype), scale.astype(self.dtype), shift.astype(self.dtype)
        return x * scale + shift


def _layer(node, x: jax.Array, train: bool, name: str, dtype=None) -> jax.Array:
    """The Flax layer of a node with parameters, named `name` in the current scope, computing in `dtype` (None: as
    its input and parameters); its parameters are float32, BatchNorm's statistics float32 reductions."""
    if isinstance(node, Conv):
        return nn.Conv(node.features, node.kernel, strides=node.strides, padding=node.padding,
                       kernel_dilation=node.dilation, feature_group_count=node.groups, use_bias=node.use_bias,
                       dtype=dtype, param_dtype=jnp.float32, name=name)(x)
    if isinstance(node, Dense):
        return nn.Dense(node.features, use_bias=node.use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)(x)
    if isinstance(node, BatchNorm):
        return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, epsilon=node.epsilon,
                            dtype=dtype, param_dtype=jnp.float32, name=name)(x)
    return _Affine(dtype, name=name)(x)


class _Scope(nn.Module):
    """A '/' scope of node names: its layers (and inner scopes) are its submodules."""

    dtype: Any = None

    @nn.compact
    def __call__(self, path: str, node, x: jax.Array, train: bool) -> jax.Array:
        head, _, rest = path.partition("/")
        return _Scope(name=head, dtype=self.dtype)(rest, node, x, train) if rest else \
            _layer(node, x, train, head, self.dtype)


class GraphModel(nn.Module):
    """Any `aujax.graph.Graph` as a Flax module: images (n, h, w, 3) float32 in [0, 1] -> the graph's output, e.g.
    logits (n, num_outputs). In `train` mode BatchNorm normalises with the batch's statistics and updates the running
    ones (`mutable=['batch_stats']`); Identity nodes (dropout) stay identities.

    `dtype` is the computation dtype (mixed precision, flax's way; None: that of the images, float32): with
    bfloat16 the images are rounded to it and every convolution, activation and BatchNorm output is bfloat16, while
    the parameters and the batch statistics (float32 reductions) stay float32; the output is then returned in
    float32, so the loss is computed from float32 logits."""

    graph: Graph
    dtype: Any = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        values, scopes = {INPUT: images if self.dtype is None else images.astype(self.dtype)}, {}
        for node in self.graph.nodes:
            inputs = [values[name] for name in node.inputs]
            if not isinstance(node, (Conv, Dense, BatchNorm, graph_lib.Affine)):
                values[node.name] = graph_lib.parameter_free(node, inputs)
                continue
            head, _, rest = node.name.partition("/")
            if not rest:
                values[node.name] = _layer(node, inputs[0], train, head, self.dtype)
                continue
            if head not in scopes:
                scopes[head] = _Scope(name=head, dtype=self.dtype)
            values[node.name] = scopes[head](rest, node, inputs[0], train)
        output = values[self.graph.output]
        return output if self.dtype is None else output.astype(jnp.float32)


def create_model(widths="full", num_outputs: int = len(facs.PAIN_AUS), name: str = "resnet18",
                 dtype: str = "float32") -> GraphModel:
    """The Flax module of architecture `name` (config `model.name`) at `widths` (config `model.widths`) with
    `num_outputs` logits, computing in `dtype` (config `model.dtype`: 'float32' or 'bfloat16', see `GraphModel`);
    its graph is `create_model(...).graph`."""
    return GraphModel(create_graph(name, widths, num_outputs), None if check_dtype(dtype) == "float32" else
                      jnp.dtype(dtype))


def init_variables(model: GraphModel, rng: jax.Array) -> dict:
    """Fresh `{'params': ..., 'batch_stats': ...}` for `model` (a pytree of float32 arrays)."""
    dummy = jnp.zeros((1, facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3), jnp.float32)
    return dict(model.init(rng, dummy, train=False))


def parameter_count(params) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
