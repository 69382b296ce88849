"""Explain decisions: relevance of every pixel for every output of a network, from one forward pass.

The canonical network (`canonize`) is run once with the composite's LRP functions (`rules`), node by node of its
graph; `jax.vjp` keeps that forward pass and its backward pass is `vmap`ped over the output seeds (one-hot x logit for
LRP, one-hot for the gradient baselines), so the forward work and every rule denominator are shared by all outputs.

A network is given as an `aujax.graph.ExplainableNetwork` (graph, variables, optionally the outputs to explain: a
loaded ONNX model is one), or as the `{'params', 'batch_stats'}` of an aujax model with its graph
(`graph=model.create_graph(...)`, or `create_model(...).graph`); without a graph the variables must be those of
one of aujax's architectures, which `aujax.model.graph_of_variables` recognises.

Usage in a batch loop (canonize once, one compiled function per composite):

    canonical = canonize(variables, graph)
    explain_fn = make_explain_fn("paper")
    logits, relevance = explain_fn(canonical, images)   # (n, outputs), (outputs, n, h, w, 3)
"""

import functools

import jax
import jax.numpy as jnp

from aujax import graph as graph_lib
from aujax.graph import (INPUT, Add, Affine, AvgPool, Clip, Conv, Dense, GlobalAvgPool, LeakyRelu, MaxPool, Relu)
from aujax.lrp import canonize as canonize_lib
from aujax.lrp import composites as composites_lib
from aujax.lrp import rules

_NONNEGATIVE_IF_INPUTS_ARE = (graph_lib.MaxPool, AvgPool, GlobalAvgPool, graph_lib.Flatten, graph_lib.Concat, Add,
                              graph_lib.Identity)
_SUMS = (Add, AvgPool, GlobalAvgPool)
INNVESTIGATE_EPSILON = 1e-7  # keras.backend.epsilon(): iNNvestigate's stabilizer of its BatchNorm rules


@functools.lru_cache(maxsize=None)
def graph_facts(graph: graph_lib.Graph) -> tuple[frozenset, frozenset]:
    """(names of the nodes whose output is >= 0 by the graph's structure, names of the linear nodes that see the
    pixels: those reached from the input through no other linear node)."""
    nonnegative, first, from_input = set(), set(), {INPUT}
    for node in graph.nodes:
        if isinstance(node, Relu) or (isinstance(node, Clip) and node.low >= 0) or \
                (isinstance(node, _NONNEGATIVE_IF_INPUTS_ARE) and all(n in nonnegative for n in node.inputs)):
            nonnegative.add(node.name)
        if any(name in from_input for name in node.inputs):
            if isinstance(node, graph_lib.LINEAR):
                first.add(node.name)
            else:
                from_input.add(node.name)
    return frozenset(nonnegative), frozenset(first)


def node_kind(node) -> str | None:
    """The composite kind of a node: 'conv', 'dense', 'sum', or None for a node no rule applies to."""
    if isinstance(node, Conv):
        return "conv"
    if isinstance(node, Dense):
        return "dense"
    return "sum" if isinstance(node, _SUMS) else None


def linear_spec(graph: graph_lib.Graph, node, dtype: str = "float32") -> rules.LayerSpec:
    """The node's `rules.LayerSpec`; `dtype` 'bfloat16' runs its products in bfloat16 (`rules.LayerSpec`)."""
    spec = rules.node_spec(node, node.inputs[0] in graph_facts(graph)[0])
    return spec if dtype == "float32" else spec._replace(compute_dtype=dtype)


def node_rule(composite: composites_lib.Composite, graph: graph_lib.Graph, node) -> rules.Rule | None:
    """The composite's rule for `node` (None: its gradient, or a node without a rule)."""
    kind = node_kind(node)
    return None if kind is None else composite.rule(kind, node.name, node.name in graph_facts(graph)[1])


def linear_bias(node, params: dict, x: jax.Array) -> jax.Array:
    return canonize_lib.input_bias(node, params, x) if isinstance(node, Conv) else params["bias"]


def _lrp_node(node, rule, params, inputs, spec):
    """The value of one node with its LRP backward pass."""
    x = inputs[0]
    stabilizer = (rule or rules.z_rule()).stabilizer  # of a sum or pool
    if isinstance(node, graph_lib.LINEAR):
        bias = linear_bias(node, params, x)
        if rule is None:
            return rules.linear(spec, x, params["kernel"], bias)
        return rules.lrp_linear(spec, rule, x, params["kernel"], bias)
    if isinstance(node, Relu):
        return rules.relu_pass(x)
    if isinstance(node, (Clip, LeakyRelu)):
        return rules.pass_relevance(x, jax.lax.stop_gradient(graph_lib.parameter_free(node, inputs)))
    if isinstance(node, canonize_lib.UnfoldedBatchNorm) and node.treatment == "innvestigate":
        return rules.lrp_affine_x2m100(INNVESTIGATE_EPSILON, x, params["scale"], params["shift"],
                                       params["rule_scale"], params["rule_shift"])
    if isinstance(node, canonize_lib.UnfoldedBatchNorm):
        return rules.lrp_affine(INNVESTIGATE_EPSILON, x, params["scale"], params["shift"])
    if isinstance(node, Affine):
        return rules.pass_relevance(x, jax.lax.stop_gradient(x * params["scale"] + params["shift"]))
    if isinstance(node, Add):
        return rules.lrp_add(stabilizer, *inputs)
    if isinstance(node, GlobalAvgPool):
        return rules.lrp_global_mean_pool(stabilizer, x)
    if isinstance(node, AvgPool):
        return rules.lrp_avg_pool(stabilizer, node, x)
    return graph_lib.parameter_free(node, inputs)  # max pool: the winner; concat: split; flatten: reshaped


def _gradient_node(node, params, inputs, spec):
    """The value of one node with its ordinary gradient."""
    if isinstance(node, graph_lib.LINEAR):
        return rules.linear(spec, inputs[0], params["kernel"], linear_bias(node, params, inputs[0]))
    if isinstance(node, Affine):
        return inputs[0] * params["scale"] + params["shift"]
    return graph_lib.parameter_free(node, inputs)


def tapped(node) -> bool:
    """Whether `lrp_forward` taps the node's inputs and output (the nodes of the relevance budget)."""
    return isinstance(node, (*graph_lib.LINEAR, *_SUMS, MaxPool))


def input_taps(node) -> list[str]:
    """'<node>/in' for one input, '<node>/in0', '<node>/in1', ... for several."""
    if len(node.inputs) == 1:
        return [f"{node.name}/in"]
    return [f"{node.name}/in{k}" for k in range(len(node.inputs))]


def lrp_forward(canonical: canonize_lib.Canonical, images: jax.Array, composite: composites_lib.Composite,
                probes: dict | None = None, dtype: str = "float32") -> tuple[jax.Array, dict]:
    """The canonical network with the composite's functions, its convolutions and dense layers computing in `dtype`
    ('float32', or 'bfloat16' with float32 accumulation, denominators and relevance: `aujax.lrp.rules`).

    images: (n, h, w, 3) float32 in [0, 1]. Returns the logits (n, outputs) and the activations at every tap point
    ('<node>/in' (or '/in0', '/in1', ... for an addition) and '<node>/out' of every linear node, sum and pool).
    `probes` (zeros shaped like those activations) are added at the tap points, so the cotangent of a probe is the
    relevance passing that point.
    """
    graph = canonical.graph
    activations, values = {}, {INPUT: images}

    def tap(name, x):
        if probes is not None:
            x = x + probes[name]
        activations[name] = x
        return x

    for node in graph.nodes:
        inputs = [values[name] for name in node.inputs]
        if tapped(node):
            inputs = [tap(name, x) for name, x in zip(input_taps(node), inputs)]
        params = canonical[node.name] if isinstance(node, (*graph_lib.LINEAR, Affine)) else None
        spec = linear_spec(graph, node, dtype) if isinstance(node, graph_lib.LINEAR) else None
        if composite.is_lrp:
            value = _lrp_node(node, node_rule(composite, graph, node), params, inputs, spec)
        else:
            value = _gradient_node(node, params, inputs, spec)
        values[node.name] = tap(f"{node.name}/out", value) if tapped(node) else value
    logits = values[graph.output]
    return (logits if canonical.outputs is None else logits[:, list(canonical.outputs)]), activations


def output_seeds(logits: jax.Array, composite: composites_lib.Composite) -> jax.Array:
    """(outputs, n, outputs): seed a is one-hot at output a, times its logit for LRP composites."""
    one_hot = jnp.eye(logits.shape[-1], dtype=logits.dtype)[:, None, :]
    if composite.relevance_seed == "logit":
        return one_hot * logits[None]
    return jnp.broadcast_to(one_hot, (logits.shape[-1],) + logits.shape)


def explain_canonical(canonical: canonize_lib.Canonical, images: jax.Array,
                      composite: composites_lib.Composite, dtype: str = "float32") -> tuple[jax.Array, jax.Array]:
    """Logits (n, outputs) and relevance (outputs, n, h, w, 3) of `images` for the canonical network, its linear
    layers computing in `dtype` (see `lrp_forward`); jittable."""
    logits, backward = jax.vjp(lambda x: lrp_forward(canonical, x, composite, dtype=dtype)[0], images)
    (relevance,) = jax.vmap(backward)(output_seeds(logits, composite))
    if composite.times_input:
        relevance = relevance * images
    return logits, relevance


def resolve_composite(composite, epsilon: float = composites_lib.DEFAULT_EPSILON) -> composites_lib.Composite:
    """A `Composite` as given, or the preset of that name with ε = `epsilon`."""
    if isinstance(composite, composites_lib.Composite):
        return composite
    return composites_lib.get_composite(composite, epsilon=epsilon)


@functools.lru_cache(maxsize=None)
def make_explain_fn(composite="paper", epsilon: float = composites_lib.DEFAULT_EPSILON, dtype: str = "float32"):
    """A jitted `fn(canonical, images) -> (logits (n, outputs), relevance (outputs, n, h, w, 3))` for a composite
    (a preset name or a `Composite`), its convolutions in `dtype` (config.explain.dtype: 'float32' or 'bfloat16',
    see `lrp_forward`; logits and relevance are float32 either way).

    `canonical` comes from `canonize(...)` (fold BatchNorm once, outside the batch loop). Cached, so every call
    with the same arguments returns the same compiled function.
    """
    from aujax import model  # the dtype names live with the model's
    return jax.jit(functools.partial(explain_canonical, composite=resolve_composite(composite, epsilon),
                                     dtype=model.check_dtype(dtype, "--config.explain.dtype")))


def as_network(network, graph: graph_lib.Graph | None = None) -> graph_lib.ExplainableNetwork:
    """An `ExplainableNetwork` from one, or from variables and their graph (None: recognised among aujax's
    architectures, `aujax.model.graph_of_variables`)."""
    if isinstance(network, graph_lib.ExplainableNetwork):
        return network
    if graph is None:
        from aujax import model  # only here: the explain stage never needs the training module otherwise
        graph = model.graph_of_variables(network)
    return graph_lib.ExplainableNetwork(graph, network)


def canonize(network, graph: graph_lib.Graph | None = None, batch_norm: str = "fold") -> canonize_lib.Canonical:
    """The canonical network (see `aujax.lrp.canonize`) of an `ExplainableNetwork`, or of variables and their graph
    (see `as_network`); `batch_norm`: 'fold' (into the convolutions), 'innvestigate' or 'innvestigate_v1' (kept,
    explained as iNNvestigate 2.1.2 or 1.0.8 does; `aujax.lrp.canonize`)."""
    network = as_network(network, graph)
    return canonize_lib.canonize(network.variables, network.graph, network.outputs, batch_norm)


def _as_model_input(images) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images of shape {images.shape} and dtype {images.dtype}: expected (n, h, w, 3) float32 "
                         "in [0, 1] (uint8 images / 255), e.g. (n, 112, 112, 3) for aujax's models")
    return images.astype(jnp.float32)


def explain_with_logits(network, images: jax.Array, composite="paper",
                        epsilon: float = composites_lib.DEFAULT_EPSILON,
                        graph: graph_lib.Graph | None = None, dtype: str = "float32") -> tuple[jax.Array, jax.Array]:
    """Logits (n, outputs) and relevance (outputs, n, h, w, 3) float32 from one forward pass, outputs in the
    network's order (for aujax's models: its AU order).

    network: an `ExplainableNetwork`, or `{'params', 'batch_stats'}` (with `graph`, or of one of aujax's
    architectures); images: (n, h, w, 3) float32 in [0, 1]; composite: a preset name (`COMPOSITES`) or a
    `Composite`; epsilon: ε of a preset's ε-layers; dtype: of the convolutions ('float32' or 'bfloat16').
    """
    return make_explain_fn(composite, epsilon, dtype)(canonize(network, graph), _as_model_input(images))


def explain(network, images: jax.Array, composite="paper", epsilon: float = composites_lib.DEFAULT_EPSILON,
            graph: graph_lib.Graph | None = None) -> jax.Array:
    """Relevance (outputs, n, h, w, 3) float32 of `images` (see `explain_with_logits`)."""
    return explain_with_logits(network, images, composite, epsilon, graph)[1]


def pixel_heatmaps(relevance):
    """(outputs, n, h, w, 3) relevance -> (outputs, n, h, w) pixel heatmaps: the sum over colour channels."""
    return relevance.sum(axis=-1)
