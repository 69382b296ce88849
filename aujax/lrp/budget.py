"""Where relevance goes: relevance entering and leaving every layer, and what each layer drops or absorbs.

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

from aujax.lrp import composites as composites_lib
from aujax.lrp import rules
from aujax.lrp.canonize import block_names, canonize
from aujax.lrp.explainer import linear_layers, lrp_forward, output_seeds


class RelevanceTrace(NamedTuple):
    logits: jax.Array  # (n, 8)
    relevance: jax.Array  # (8, n, h, w, 3) at the pixels
    at_taps: dict  # tap name -> (8, *activation shape): relevance passing the tap point
    activations: dict  # tap name -> forward activation there


def trace_relevance(canonical: dict, images: jax.Array, composite: composites_lib.Composite) -> RelevanceTrace:
    """Relevance at every tap point of `lrp_forward` for all 8 AUs, from one forward pass; jittable."""
    _, shapes = jax.eval_shape(lambda x: lrp_forward(canonical, x, composite), images)
    probes = jax.tree_util.tree_map(lambda shape: jnp.zeros(shape.shape, shape.dtype), shapes)
    logits, backward, activations = jax.vjp(lambda x, p: lrp_forward(canonical, x, composite, p), images, probes,
                                            has_aux=True)
    relevance, at_taps = jax.vmap(backward)(output_seeds(logits, composite))
    return RelevanceTrace(logits, relevance, at_taps, activations)


def _totals(relevance: jax.Array) -> np.ndarray:
    """(8, n, ...) -> (8, n) sums."""
    return np.asarray(relevance.reshape(relevance.shape[:2] + (-1,)).sum(-1), np.float64)


def _dropped_at_zero(activation: jax.Array, relevance: jax.Array) -> jax.Array:
    """Relevance of the z-rule sums and pools that reaches an output that is exactly zero."""
    return jnp.where(activation == 0, relevance, 0.0)


def budget_from_trace(canonical: dict, trace: RelevanceTrace, composite: composites_lib.Composite) -> dict:
    """{stage name: {'relevance_in', 'relevance_out', 'dropped'} each (8, n) float64}, in forward order."""
    layers = linear_layers(canonical)
    at, act = trace.at_taps, trace.activations

    def linear_entry(name):
        layer = layers[name]
        rule = composite.linear_rule(layer.spec.kind, layer.first)
        dropped = rules.dropped_relevance(layer.spec, rule, act[f"{name}/in"], layer.kernel, layer.bias,
                                          at[f"{name}/out"])
        return {"relevance_in": _totals(at[f"{name}/in"]), "relevance_out": _totals(at[f"{name}/out"]),
                "dropped": _totals(dropped)}

    def sum_entry(inputs, output, dropped):
        return {"relevance_in": sum(_totals(at[name]) for name in inputs), "relevance_out": _totals(at[output]),
                "dropped": _totals(dropped)}

    budget = {"stem_conv": linear_entry("stem_conv"),
              "max_pool": sum_entry(["max_pool/in"], "max_pool/out", jnp.zeros_like(at["max_pool/out"]))}
    for block in block_names(canonical):
        for conv in ("conv1", "conv2", "proj_conv"):
            if f"{block}/{conv}" in layers:
                budget[f"{block}/{conv}"] = linear_entry(f"{block}/{conv}")
        budget[f"{block}/add"] = sum_entry([f"{block}/add/branch", f"{block}/add/skip"], f"{block}/add/out",
                                           _dropped_at_zero(act[f"{block}/add/out"], at[f"{block}/add/out"]))
    budget["global_pool"] = sum_entry(["global_pool/in"], "global_pool/out",
                                      _dropped_at_zero(act["global_pool/out"], at["global_pool/out"]))
    budget["head"] = linear_entry("head")
    return budget


def relevance_budget(variables: dict, images: jax.Array, composite: str = "paper",
                     epsilon: float = composites_lib.DEFAULT_EPSILON) -> dict:
    """Per-layer relevance budget of an LRP composite on `images` (n, 112, 112, 3) in [0, 1]; see the module doc."""
    resolved = composites_lib.get_composite(composite, epsilon=epsilon)
    if not resolved.is_lrp:
        raise ValueError(f"composite {composite!r} is a gradient baseline: it has no relevance budget")
    canonical = canonize(variables)
    trace = jax.jit(trace_relevance, static_argnums=2)(canonical, jnp.asarray(images, jnp.float32), resolved)
    return budget_from_trace(canonical, trace, resolved)


def budget_shares(budget: dict) -> dict:
    """{stage: {'dropped_share', 'absorbed_share'}} plus 'total', as fractions of the summed |head output|."""
    scale = np.abs(budget["head"]["relevance_out"]).sum()
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
