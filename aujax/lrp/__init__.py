"""LRP for any network described as an `aujax.graph.Graph`: rules as custom-VJP node functions, canonization,
composites and the explain API.

`aujax.lrp.heatmaps` draws relevance (numpy and matplotlib; imported by name, not here, so that explaining needs no
matplotlib); `budget` reports where relevance is dropped or absorbed.
`load_onnx` reads a network trained elsewhere (an ONNX file and its model card, `aujax.lrp.card`).
"""

from aujax.graph import ExplainableNetwork
from aujax.lrp.budget import budget_shares, budget_table, relevance_budget, trace_relevance
from aujax.lrp.canonize import Canonical, without_biases
from aujax.lrp.composites import (COMPOSITES, DEFAULT_EPSILON, Composite, get_composite, register_composite)
from aujax.lrp.explainer import (canonize, explain, explain_canonical, explain_with_logits, lrp_forward,
                                 make_explain_fn, pixel_heatmaps)
from aujax.lrp.onnx import load_onnx

__all__ = [
        "COMPOSITES", "DEFAULT_EPSILON", "Canonical", "Composite", "ExplainableNetwork", "budget_shares",
        "budget_table", "canonize", "explain", "explain_canonical", "explain_with_logits", "get_composite",
        "load_onnx", "lrp_forward", "make_explain_fn", "pixel_heatmaps", "register_composite", "relevance_budget",
        "trace_relevance", "without_biases",
]
