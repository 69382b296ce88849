"""LRP for the AU ResNet-18: rules as custom-VJP layer functions, canonization, composites and the explain API.

`aujax.lrp.heatmaps` draws relevance (numpy and matplotlib; imported by name, not here, so that explaining needs no
matplotlib); `budget` reports where relevance is dropped or absorbed.
"""

from aujax.lrp.budget import budget_shares, budget_table, relevance_budget, trace_relevance
from aujax.lrp.canonize import canonize, fold_batch_norm, without_biases
from aujax.lrp.composites import COMPOSITES, DEFAULT_EPSILON, Composite, get_composite
from aujax.lrp.explainer import (explain, explain_canonical, explain_with_logits, lrp_forward, make_explain_fn,
                                 pixel_heatmaps)

__all__ = [
        "COMPOSITES", "DEFAULT_EPSILON", "Composite", "budget_shares", "budget_table", "canonize", "explain",
        "explain_canonical", "explain_with_logits", "fold_batch_norm", "get_composite", "lrp_forward",
        "make_explain_fn", "pixel_heatmaps", "relevance_budget", "trace_relevance", "without_biases",
]
