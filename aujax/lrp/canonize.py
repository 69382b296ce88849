"""Canonization: a graph (`aujax.graph`) rewritten for LRP as linear nodes with biases, element-wise nodes, sums and
pools, computing the same logits.

- Eval-mode BatchNorm is the per-channel affine map y = x * f + t, f = scale / sqrt(var + eps), t = beta - mean * f.
  Right after a convolution or dense node (its only reader) it folds into it exactly:
      kernel' = kernel * f (per output channel),   bias' = bias * f + t
- An affine map (an unfolded BatchNorm, or an `Affine` node such as an input normalisation) whose only reader is a
  dense node, or an ungrouped convolution, folds into that node's input side: kernel' = kernel * scale (per input
  channel) and the shift becomes bias. A convolution pads its input with zeros, i.e. the *normalised* input, so the
  folded bias is the sum over the window's cells inside the image of kernel * shift: it differs at the border, and
  the canonical convolution keeps `bias_kernel` (kernel * shift) to compute that bias map for the image size at hand
  (`input_bias`).
  Relevance then lands on the raw input, as the zB rule's box [0, 1] wants.
- Any other affine map stays an `Affine` node (LRP passes its relevance through: each output is one input's).
- `batch_norm` other than the default "fold" keeps every BatchNorm as an `UnfoldedBatchNorm` node (forward: its
  affine map) explained as iNNvestigate's LRP presets explain a BatchNormalization layer (docs/lrp.md, "BatchNorm
  as iNNvestigate treats it"): "innvestigate" as 2.1.2's LRPSequentialPreset A/B (their α2β1 "X" rule on a
  surrogate map k = gamma / sqrt(var^2 + eps), b = beta - mean / sqrt(var^2 + eps): params 'rule_scale',
  'rule_shift'), "innvestigate_v1" as 1.0.8 (the z-rule of the true map, the shift absorbing its share).
- Identity nodes (dropout) disappear; a trailing Sigmoid / Softmax is dropped, so relevance starts at the logit.

The result is a `Canonical`: the canonical graph (static) and its parameters, a pytree nested by node name:
{'<conv or dense>': {'kernel', 'bias'[, 'bias_kernel']}, '<affine>': {'scale', 'shift'}}.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from aujax import graph as graph_lib
from aujax.graph import INPUT, Affine, BatchNorm, Conv, Dense, Graph, Identity


BATCH_NORM_TREATMENTS = ("fold", "innvestigate", "innvestigate_v1")  # config.explain.batch_norm


@dataclasses.dataclass(frozen=True)
class UnfoldedBatchNorm(Affine):
    """A BatchNorm kept as y = x * scale + shift (params 'scale', 'shift'; for `treatment` 'innvestigate' also
    'rule_scale', 'rule_shift'), explained as iNNvestigate's version `treatment` explains it."""

    treatment: str = "innvestigate"


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"], meta_fields=["graph", "outputs"])
@dataclasses.dataclass(frozen=True)
class Canonical:
    """A canonical network: `graph` (static under jit), `params` (arrays), `outputs` (the output units explained,
    None: all)."""

    graph: Graph
    params: dict
    outputs: tuple[int, ...] | None = None

    def __getitem__(self, name: str) -> dict:
        """The parameters of node `name` ('stage1_block1/conv1' or 'stage1_block1' for a scope)."""
        return graph_lib.lookup(self.params, name)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What canonization does to a graph: the canonical graph and the folds, in order.

    folds: ('into_output', batch_norm, linear, epsilon) a BatchNorm folded into the node before it; ('affine',
    batch_norm, epsilon) a BatchNorm kept as an Affine node; ('into_input', affine, linear) an affine map folded
    into the node after it (after all others).
    """

    graph: Graph
    folds: tuple


def _ancestors(graph: Graph, name: str) -> set:
    needed, stack = set(), [name]
    while stack:
        current = stack.pop()
        if current != INPUT and current not in needed:
            needed.add(current)
            stack.extend(graph.node(current).inputs)
    return needed


def _readers(nodes, name: str) -> list:
    return [node for node in nodes if name in node.inputs]


def check_batch_norm(batch_norm: str) -> str:
    if batch_norm not in BATCH_NORM_TREATMENTS:
        raise ValueError(f"batch_norm {batch_norm!r} (config.explain.batch_norm): expected one of "
                         f"{', '.join(BATCH_NORM_TREATMENTS)}")
    return batch_norm


@functools.lru_cache(maxsize=None)
def plan(graph: Graph, batch_norm: str = "fold") -> Plan:
    """The canonization of `graph` with BatchNorm treated as `batch_norm` (`BATCH_NORM_TREATMENTS`; cached: it
    depends on these two only)."""
    needed = _ancestors(graph, graph.logit)
    nodes = [node for node in graph.nodes if node.name in needed]
    renamed = {}  # removed node -> the node that now stands for it
    kept, folds = {}, []
    for node in nodes:
        node = dataclasses.replace(node, inputs=tuple(renamed.get(name, name) for name in node.inputs))
        source = kept.get(node.inputs[0])
        if isinstance(node, Identity):
            renamed[node.name] = node.inputs[0]
        elif isinstance(node, BatchNorm) and check_batch_norm(batch_norm) != "fold":
            folds.append(("affine", node.name, node.epsilon))
            kept[node.name] = UnfoldedBatchNorm(node.name, node.inputs, batch_norm)
        elif isinstance(node, BatchNorm) and isinstance(source, (Conv, Dense)) \
                and len(_readers(nodes, source.name)) == 1:
            folds.append(("into_output", node.name, source.name, node.epsilon))
            renamed[node.name] = source.name
        elif isinstance(node, BatchNorm):
            folds.append(("affine", node.name, node.epsilon))
            kept[node.name] = Affine(node.name, node.inputs)
        else:
            kept[node.name] = dataclasses.replace(node, use_bias=True) if isinstance(node, (Conv, Dense)) else node
    output = renamed.get(graph.logit, graph.logit)
    for affine in [node for node in kept.values()
                   if type(node) is Affine and node.name != output]:  # an UnfoldedBatchNorm stays
        readers = _readers(kept.values(), affine.name)
        reader = readers[0] if len(readers) == 1 else None
        if isinstance(reader, Dense) or (isinstance(reader, Conv) and reader.groups == 1):
            folds.append(("into_input", affine.name, reader.name))
            kept[reader.name] = dataclasses.replace(reader, inputs=affine.inputs)
            del kept[affine.name]
    return Plan(Graph(tuple(kept.values()), output), tuple(folds))


@functools.partial(jax.jit, static_argnums=0)
def fold(plan: Plan, variables: dict) -> dict:
    """The canonical parameters of `variables` ({'params', 'batch_stats'} of the planned graph)."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    folded, from_batch_norm = {}, {step[1] for step in plan.folds if step[0] == "affine"}
    surrogate = {node.name for node in plan.graph.nodes
                 if isinstance(node, UnfoldedBatchNorm) and node.treatment == "innvestigate"}
    for node in plan.graph.nodes:
        own = graph_lib.lookup(params, node.name, {})
        if isinstance(node, (Conv, Dense)):
            folded[node.name] = {"kernel": own["kernel"],
                                 "bias": own.get("bias", jnp.zeros(node.features, own["kernel"].dtype))}
        elif isinstance(node, Affine) and node.name not in from_batch_norm:
            folded[node.name] = {"scale": own["scale"], "shift": own["shift"]}
    for step in plan.folds:
        if step[0] == "into_input":
            _, affine, linear = step
            own = folded.pop(affine, None) or graph_lib.lookup(params, affine, {})
            folded[linear] = _fold_input(plan.graph.node(linear), folded[linear], own["scale"], own["shift"])
            continue
        bn, bn_stats = graph_lib.lookup(params, step[1], {}), graph_lib.lookup(stats, step[1], {})
        factor, shift = graph_lib.batch_norm_affine(bn["scale"], bn["bias"], bn_stats["mean"], bn_stats["var"],
                                                    step[-1])
        if step[0] == "affine":
            folded[step[1]] = {"scale": factor, "shift": shift}
            if step[1] in surrogate:
                folded[step[1]].update(_innvestigate_surrogate(bn, bn_stats, step[-1]))
        else:
            linear = folded[step[2]]
            folded[step[2]] = {"kernel": linear["kernel"] * factor, "bias": linear["bias"] * factor + shift}
    nested = {}
    for name, leaves in folded.items():
        nested = graph_lib.with_entry(nested, name, leaves)
    return nested


def _innvestigate_surrogate(bn: dict, stats: dict, epsilon: float) -> dict:
    """The per-channel map iNNvestigate 2.1.2 explains in place of a BatchNorm (innvestigate/backend/graph.py,
    apply_mapping_to_fused_bn_layer, fuse_mode 'one_linear'), as it is written there: the variance squared, the mean
    not scaled by gamma. Not the layer's forward map, which stays `scale`, `shift`."""
    root = jnp.sqrt(stats["var"] ** 2 + epsilon)
    return {"rule_scale": bn["scale"] / root, "rule_shift": bn["bias"] - stats["mean"] / root}


def _fold_input(node, linear: dict, scale: jax.Array, shift: jax.Array) -> dict:
    """A dense or conv node after y = x * scale + shift (per input channel) as one node reading x."""
    kernel = linear["kernel"] * scale[:, None]
    if isinstance(node, Dense):
        return {"kernel": kernel, "bias": linear["bias"] + shift @ linear["kernel"]}
    # the shift enters where the window is inside the image: bias map = bias + conv(ones, kernel * shift)
    return {"kernel": kernel, "bias": linear["bias"], "bias_kernel": linear["kernel"] * shift[:, None]}


def input_bias(node: Conv, params: dict, x: jax.Array) -> jax.Array:
    """The bias of a canonical conv for input x: (c_out,), or (1, h', w', c_out) where an affine map was folded into
    its input side."""
    if "bias_kernel" not in params:
        return params["bias"]
    return params["bias"] + graph_lib.conv(node, jnp.ones((1, *x.shape[1:]), x.dtype), params["bias_kernel"])


def canonize(variables: dict, graph: Graph, outputs=None, batch_norm: str = "fold") -> Canonical:
    """`variables` ({'params', 'batch_stats'} of `graph`) folded for LRP (see the module docstring), explaining the
    output units `outputs` (None: all), BatchNorm treated as `batch_norm` (`BATCH_NORM_TREATMENTS`). ValueError
    naming what is missing where the variables do not fit the graph."""
    planned = plan(graph, check_batch_norm(batch_norm))
    try:
        params = fold(planned, variables)
    except KeyError as missing:
        raise ValueError(f"variables lack {missing}: expected {{'params', 'batch_stats'}} of the network's graph "
                         "(from model.init_variables or a training checkpoint)") from None
    return Canonical(planned.graph, params, None if outputs is None else tuple(outputs))


def without_biases(canonical: Canonical) -> Canonical:
    """`canonical` with every bias set to zero (for conservation checks: no relevance is absorbed by biases)."""
    return jax.tree_util.tree_map_with_path(
            lambda path, leaf: jnp.zeros_like(leaf) if path[-1].key in ("bias", "bias_kernel", "shift") else leaf,
            canonical)
