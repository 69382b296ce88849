"""A network as a graph of typed nodes: the one description that training (`aujax.model`) and LRP (`aujax.lrp`)
both read. This module imports neither of them.

Contract (others build on it; keep it):

- One frozen, hashable dataclass per node kind. Every node has `name` (unique; a '/'-separated scope path such as
  'stage1_block1/conv1', which is also the path of its parameters in the nested params dict) and `inputs` (names of
  earlier nodes; the graph's input is called 'input'). The kinds and their fields:
    Conv(features, kernel (kh, kw), strides (sh, sw), padding ((top, bottom), (left, right)), dilation (dh, dw),
         groups, use_bias)                 params {'kernel' (kh, kw, c_in / groups, c_out) HWIO, 'bias' (c_out,)}
    Dense(features, use_bias)              params {'kernel' (in, out), 'bias' (out,)}; input (n, in)
    BatchNorm(epsilon)                     params {'scale', 'bias'}, batch_stats {'mean', 'var'}, each (c,)
    Affine()                               params {'scale', 'shift'} (c,): y = x * scale + shift (e.g. an input
                                           normalisation: scale 1 / std, shift -mean / std)
    Relu(), Clip(low, high) (ReLU6: 0, 6), LeakyRelu(slope)
    Add()                                  the sum of its n >= 2 inputs (same shapes)
    Concat()                               its inputs joined along the channel axis (the last)
    MaxPool(window, strides, padding, ceil_mode)
    AvgPool(window, strides, padding, ceil_mode, count_include_pad)   window and strides (h, w), padding as Conv's;
                                           ceil_mode and count_include_pad as torch.nn.MaxPool2d / AvgPool2d
    GlobalAvgPool()                        (n, h, w, c) -> (n, c)
    Flatten(layout)                        (n, h, w, c) -> (n, h * w * c) with the elements in the order of the
                                           source `layout`: 'NCHW' (a PyTorch / ONNX export: c, h, w) or 'NHWC'
    Identity()                             dropout and other no-ops at inference
    Sigmoid(), Softmax()                   only as the graph's output: a trailing activation (LRP starts at its
                                           input, the logit)
  Conv, BatchNorm, Affine, the activations and pools read and write (n, h, w, c) NHWC arrays.
- `Graph(nodes, output)`: nodes in topological order, validated on construction (ValueError naming the node for an
  unknown input, a duplicate name, a node before its input (cycle), a wrong number of inputs, an activation that is
  not the output).
- Variables `{'params', 'batch_stats'}`: nested dicts by the name path ('stage1_block1/conv1' ->
  params['stage1_block1']['conv1']); leaves as flax writes them (above); all float arrays NHWC / HWIO.
- `apply(graph, variables, images)`: the plain-JAX reference forward pass in inference mode; images
  (n, h, w, c) NHWC float -> the output node's value (n, outputs). `apply(..., output=name)` returns another node's.
- `ExplainableNetwork(graph, variables, au_ids=None, outputs=None)`: a network with its variables, as
  `aujax.lrp.explain_with_logits` accepts it (a loaded ONNX model is one). `outputs` selects and orders the output
  units explained (None: all), `au_ids` names the AU of each of them.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

INPUT = "input"
Pair = tuple[int, int]
Padding = tuple[Pair, Pair]


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    inputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Conv(Node):
    features: int
    kernel: Pair
    strides: Pair = (1, 1)
    padding: Padding = ((0, 0), (0, 0))
    dilation: Pair = (1, 1)
    groups: int = 1
    use_bias: bool = True


@dataclasses.dataclass(frozen=True)
class Dense(Node):
    features: int
    use_bias: bool = True


@dataclasses.dataclass(frozen=True)
class BatchNorm(Node):
    epsilon: float = 1e-5


@dataclasses.dataclass(frozen=True)
class Affine(Node):
    """y = x * scale + shift per channel (params 'scale', 'shift')."""


@dataclasses.dataclass(frozen=True)
class Relu(Node):
    """max(x, 0)."""


@dataclasses.dataclass(frozen=True)
class Clip(Node):
    low: float = 0.0
    high: float = 6.0


@dataclasses.dataclass(frozen=True)
class LeakyRelu(Node):
    slope: float = 0.01


@dataclasses.dataclass(frozen=True)
class Add(Node):
    """The sum of its n >= 2 inputs."""


@dataclasses.dataclass(frozen=True)
class Concat(Node):
    """Its inputs joined along the channel axis."""


@dataclasses.dataclass(frozen=True)
class MaxPool(Node):
    window: Pair
    strides: Pair
    padding: Padding = ((0, 0), (0, 0))
    ceil_mode: bool = False


@dataclasses.dataclass(frozen=True)
class AvgPool(Node):
    window: Pair
    strides: Pair
    padding: Padding = ((0, 0), (0, 0))
    ceil_mode: bool = False
    count_include_pad: bool = True


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Node):
    """(n, h, w, c) -> (n, c): the spatial mean."""


@dataclasses.dataclass(frozen=True)
class Flatten(Node):
    layout: str = "NHWC"

    def __post_init__(self):
        if self.layout not in ("NHWC", "NCHW"):
            raise ValueError(f"node {self.name}: Flatten layout {self.layout!r}, expected 'NHWC' or 'NCHW'")


@dataclasses.dataclass(frozen=True)
class Identity(Node):
    """Dropout and other no-ops at inference."""


@dataclasses.dataclass(frozen=True)
class Sigmoid(Node):
    """A trailing activation: only as the graph's output."""


@dataclasses.dataclass(frozen=True)
class Softmax(Node):
    """A trailing activation over the last axis: only as the graph's output."""


LINEAR = (Conv, Dense)
OUTPUT_ACTIVATIONS = (Sigmoid, Softmax)
_N_ARY = (Add, Concat)


@dataclasses.dataclass(frozen=True)
class Graph:
    """Nodes in topological order and the name of the output node; validated on construction."""

    nodes: tuple
    output: str

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(self.nodes))
        seen = {INPUT}
        for node in self.nodes:
            if not isinstance(node, Node) or type(node) is Node:
                raise ValueError(f"graph node {node!r}: expected one of the node kinds of aujax.graph")
            if node.name in seen:
                raise ValueError(f"graph node {node.name}: the name is used twice (or is the reserved {INPUT!r})")
            for name in node.inputs:
                if name not in seen:
                    known = name in {n.name for n in self.nodes}
                    raise ValueError(f"graph node {node.name}: input {name!r} "
                                     + ("comes later (a cycle, or nodes out of topological order)" if known
                                        else "is no node of the graph"))
            arity_ok = len(node.inputs) >= (2 if isinstance(node, Add) else 1) if isinstance(node, _N_ARY) \
                else len(node.inputs) == 1
            if not arity_ok:
                raise ValueError(f"graph node {node.name}: {type(node).__name__} with {len(node.inputs)} inputs")
            if isinstance(node, OUTPUT_ACTIVATIONS) and node.name != self.output:
                raise ValueError(f"graph node {node.name}: {type(node).__name__} is supported only as the output")
            seen.add(node.name)
        if self.output not in seen - {INPUT}:
            raise ValueError(f"graph output {self.output!r} is no node of the graph")

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def consumers(self, name: str) -> list[Node]:
        """The nodes that read `name`, in order."""
        return [node for node in self.nodes if name in node.inputs]

    @property
    def logit(self) -> str:
        """The node whose value is the logit: the output, or the input of a trailing Sigmoid / Softmax."""
        last = self.node(self.output)
        return last.inputs[0] if isinstance(last, OUTPUT_ACTIVATIONS) else self.output


class ExplainableNetwork(NamedTuple):
    """A graph with its variables, as `aujax.lrp.explain_with_logits` accepts it.

    outputs: indices of the output units to explain, in order (None: all); au_ids: the AU id of each explained unit.
    """

    graph: Graph
    variables: dict
    au_ids: tuple[int, ...] | None = None
    outputs: tuple[int, ...] | None = None


def lookup(tree: dict, name: str, default=None):
    """The subtree of a nested dict at the '/'-separated path `name` (`default` where absent)."""
    for key in name.split("/"):
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def with_entry(tree: dict, name: str, value) -> dict:
    """A copy of the nested dict `tree` with `value` at the '/'-separated path `name`."""
    key, _, rest = name.partition("/")
    tree = dict(tree)
    tree[key] = with_entry(tree.get(key, {}), rest, value) if rest else value
    return tree


# ---------------------------------------------------------------------------------------------------------------
# The forward functions of the nodes (inference mode), shared by the Flax module and by LRP


def conv(node: Conv, x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """(n, h, w, c_in) -> (n, h', w', c_out)."""
    z = jax.lax.conv_general_dilated(x, kernel, node.strides, node.padding, rhs_dilation=node.dilation,
                                     feature_group_count=node.groups, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return z if bias is None else z + bias


def batch_norm_affine(scale, bias, mean, var, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Eval-mode BatchNorm as y = x * factor + shift: (factor, shift), each (c,)."""
    factor = scale * jax.lax.rsqrt(var + epsilon)
    return factor, bias - mean * factor


def _ceil_extra(size: int, window: int, stride: int, pad: Pair) -> int:
    """Cells added after `pad[1]` so that a ceil-mode pool (torch's rule) gets its last, partial window."""
    total = size + pad[0] + pad[1]
    out = -(-(total - window) // stride) + 1
    if (out - 1) * stride >= size + pad[0]:  # the last window would start in the padding
        out -= 1
    return max(0, (out - 1) * stride + window - total)


def pool_padding(node, x: jax.Array) -> Padding:
    """The pool's padding on (h, w), with the cells ceil mode adds after it."""
    if not node.ceil_mode:
        return node.padding
    return tuple((pad[0], pad[1] + _ceil_extra(x.shape[1 + axis], node.window[axis], node.strides[axis], pad))
                 for axis, pad in enumerate(node.padding))


def _window_sum(x: jax.Array, node, padding: Padding) -> jax.Array:
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, *node.window, 1), (1, *node.strides, 1),
                                 ((0, 0), *padding, (0, 0)))


def max_pool(node: MaxPool, x: jax.Array) -> jax.Array:
    """Padded cells never win."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *node.window, 1), (1, *node.strides, 1),
                                 ((0, 0), *pool_padding(node, x), (0, 0)))


def avg_pool(node: AvgPool, x: jax.Array) -> jax.Array:
    """Each window's sum over the cells its divisor counts: the input's, plus the explicit padding where
    `count_include_pad` (never the cells ceil mode adds), as torch does."""
    padding = pool_padding(node, x)
    counted = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if node.count_include_pad:
        counted = jnp.pad(counted, ((0, 0), *node.padding, (0, 0)), constant_values=1.0)
        divisor_padding = tuple((0, total[1] - explicit[1]) for total, explicit in zip(padding, node.padding))
    else:
        divisor_padding = padding
    return _window_sum(x, node, padding) / _window_sum(counted, node, divisor_padding)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """(n, h, w, c) -> (n, c)."""
    return jnp.mean(x, axis=(1, 2))


def flatten(node: Flatten, x: jax.Array) -> jax.Array:
    if node.layout == "NCHW" and x.ndim == 4:
        x = jnp.transpose(x, (0, 3, 1, 2))
    return x.reshape(x.shape[0], -1)


def parameter_free(node: Node, inputs: Sequence[jax.Array]) -> jax.Array:
    """The value of a node without parameters (all kinds but Conv, Dense, BatchNorm and Affine)."""
    x = inputs[0]
    kind = type(node)
    if kind is Relu:
        return jax.nn.relu(x)
    if kind is Clip:
        return jnp.clip(x, node.low, node.high)
    if kind is LeakyRelu:
        return jnp.where(x >= 0, x, node.slope * x)
    if kind is Add:
        return sum(inputs[1:], x)
    if kind is Concat:
        return jnp.concatenate(inputs, axis=-1)
    if kind is MaxPool:
        return max_pool(node, x)
    if kind is AvgPool:
        return avg_pool(node, x)
    if kind is GlobalAvgPool:
        return global_avg_pool(x)
    if kind is Flatten:
        return flatten(node, x)
    if kind is Identity:
        return x
    if kind is Sigmoid:
        return jax.nn.sigmoid(x)
    if kind is Softmax:
        return jax.nn.softmax(x, axis=-1)
    raise ValueError(f"graph node {node.name}: {kind.__name__} has parameters")


def _apply_node(node: Node, variables: dict, inputs: list) -> jax.Array:
    params = lookup(variables.get("params", {}), node.name, {})
    x = inputs[0]
    if isinstance(node, Conv):
        return conv(node, x, params["kernel"], params.get("bias") if node.use_bias else None)
    if isinstance(node, Dense):
        z = x @ params["kernel"]
        return z + params["bias"] if node.use_bias else z
    if isinstance(node, BatchNorm):
        stats = lookup(variables["batch_stats"], node.name, {})
        factor, shift = batch_norm_affine(params["scale"], params["bias"], stats["mean"], stats["var"], node.epsilon)
        return x * factor + shift
    if isinstance(node, Affine):
        return x * params["scale"] + params["shift"]
    return parameter_free(node, inputs)


def apply(graph: Graph, variables: dict, images: jax.Array, output: str | None = None) -> jax.Array:
    """The graph in inference mode: images (n, h, w, c) NHWC float -> the value of `output` (default the graph's
    output node), e.g. logits (n, num_outputs). Missing parameters are a ValueError naming the node."""
    values = {INPUT: images}
    output = output or graph.output
    for node in graph.nodes:
        try:
            values[node.name] = _apply_node(node, variables, [values[name] for name in node.inputs])
        except KeyError as missing:
            raise ValueError(f"graph node {node.name}: variables lack {missing} (expected the layout of the "
                             "aujax.graph docstring)") from None
        if node.name == output:
            return values[node.name]
    raise ValueError(f"graph output {output!r} is no node of the graph")


def output_size(graph: Graph, variables: dict, image_shape: Sequence[int]) -> int:
    """The number of outputs for images of shape (h, w, c) (shapes only, nothing computed)."""
    shape = jax.eval_shape(lambda v, x: apply(graph, v, x), variables,
                           jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    return math.prod(shape.shape[1:])
