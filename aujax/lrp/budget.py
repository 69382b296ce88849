"""Where relevance goes: relevance entering and leaving every linear node, sum and pool of a network's graph, and
what each drops or absorbs.

A layer conserves relevance when the relevance at its input sums to the relevance at its output. What it loses is
split into
  dropped:  relevance of output units whose rule denominator is exactly zero (z+: positive pre-activation zero,
            e.g. a 1x1 stride-2 projection over an all-zero pixel whose negative bias still gets relevance from
            the residual split); it cannot be passed on,
  absorbed: the rest, taken by biases (and, negligibly, by stabilizers): out - in - dropped.
Shares are relative to the summed |output relevance| (|logit| for LRP composites) over all AUs and images.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from aujax import graph as graph_lib
from aujax.lrp import composites as composites_lib
from aujax.lrp import rules
from aujax.lrp.explainer import (canonize, input_taps, linear_bias, linear_spec, lrp_forward, node_rule, output_seeds,
                                 resolve_composite, tapped)


class RelevanceTrace(NamedTuple):
    logits: jax.Array  # (n, outputs)
    relevance: jax.Array  # (outputs, n, h, w, 3) at the pixels
    at_taps: dict  # tap name -> (outputs, *activation shape): relevance passing the tap point
    activations: dict  # tap name -> forward activation there


def trace_relevance(canonical, images: jax.Array, composite: composites_lib.Composite) -> RelevanceTrace:
    """Relevance at every tap point of `lrp_forward` for all outputs, from one forward pass; jittable."""
    _, shapes = jax.eval_shape(lambda x: lrp_forward(canonical, x, composite), images)
    probes = jax.tree_util.tree_map(lambda shape: jnp.zeros(shape.shape, shape.dtype), shapes)
    logits, backward, activations = jax.vjp(lambda x, p: lrp_forward(canonical, x, composite, p), images, probes,
                                            has_aux=True)
    relevance, at_taps = jax.vmap(backward)(output_seeds(logits, composite))
    return RelevanceTrace(logits, relevance, at_taps, activations)


def _totals(relevance: jax.Array) -> np.ndarray:
    """(outputs, n, ...) -> (outputs, n) sums."""
    return np.asarray(relevance.reshape(relevance.shape[:2] + (-1,)).sum(-1), np.float64)


def _dropped(canonical, node, composite, trace: RelevanceTrace) -> jax.Array:
    """Relevance a node cannot pass on: a linear rule's of denominators exactly zero; a sum's or pool's that reaches
    an output exactly zero (max pooling drops none)."""
    at, act = trace.at_taps, trace.activations
    out = at[f"{node.name}/out"]
    if isinstance(node, graph_lib.LINEAR):
        params = canonical[node.name]
        x = act[f"{node.name}/in"]
        return rules.dropped_relevance(linear_spec(canonical.graph, node), node_rule(composite, canonical.graph, node),
                                       x, params["kernel"], linear_bias(node, params, x), out)
    if isinstance(node, graph_lib.MaxPool):
        return jnp.zeros_like(out)
    return jnp.where(act[f"{node.name}/out"] == 0, out, 0.0)


def budget_from_trace(canonical, trace: RelevanceTrace, composite: composites_lib.Composite) -> dict:
    """{node name: {'relevance_in', 'relevance_out', 'dropped'} each (outputs, n) float64} for every linear node,
    sum and pool, in forward order."""
    return {node.name: {"relevance_in": sum(_totals(trace.at_taps[name]) for name in input_taps(node)),
                        "relevance_out": _totals(trace.at_taps[f"{node.name}/out"]),
                        "dropped": _totals(_dropped(canonical, node, composite, trace))}
            for node in canonical.graph.nodes if tapped(node)}


def relevance_budget(network, images: jax.Array, composite: str = "paper",
                     epsilon: float = composites_lib.DEFAULT_EPSILON, graph=None) -> dict:
    """Per-node relevance budget of an LRP composite on `images` (n, h, w, 3) in [0, 1]; `network` and `graph` as
    `explain_with_logits` takes them; see the module doc."""
    resolved = resolve_composite(composite, epsilon)
    if not resolved.is_lrp:
        raise ValueError(f"composite {resolved.name!r} is a gradient baseline: it has no relevance budget")
    canonical = canonize(network, graph)
    trace = jax.jit(trace_relevance, static_argnums=2)(canonical, jnp.asarray(images, jnp.float32), resolved)
    return budget_from_trace(canonical, trace, resolved)


def budget_shares(budget: dict) -> dict:
    """{stage: {'dropped_share', 'absorbed_share'}} plus 'total', as fractions of the summed |output relevance| of
    the last stage (the logit's node: for LRP the summed |logit|)."""
    scale = np.abs(budget[list(budget)[-1]]["relevance_out"]).sum()
    scale = scale if scale > 0 else 1.0
    shares = {}
    for name, entry in budget.items():
        absorbed = entry["relevance_out"] - entry["relevance_in"] - entry["dropped"]
        shares[name] = {"dropped_share": float(np.abs(entry["dropped"]).sum() / scale),
                        "absorbed_share": float(np.abs(absorbed).sum() / scale)}
    shares["total"] = {key: sum(share[key] for share in shares.values())
                       for key in ("dropped_share", "absorbed_share")}
    return shares


def budget_table(budget: dict) -> str:
    """The shares of `budget_shares` as a markdown table, one row per stage."""
    rows = ["| stage | dropped | absorbed |", "| --- | ---: | ---: |"]
    rows += [f"| {name} | {share['dropped_share']:.2%} | {share['absorbed_share']:.2%} |"
             for name, share in budget_shares(budget).items()]
    return "\n".join(rows)
