"""config.explain.batch_norm: BatchNorm folded into the convolution before it (default) or kept and explained as
iNNvestigate 2.1.2 (its presets' α2β1 rule on a surrogate map) or 1.0.8 (the z-rule of the map) do, each against a
numpy LRP-0 of a tiny two-branch network written from those formulas."""

import jax
import numpy as np
import pytest

from aujax import graph as graph_lib
from aujax import lrp
from aujax.configs import default
from aujax.graph import INPUT, Add, BatchNorm, Conv, Dense, GlobalAvgPool, Graph, Relu
from aujax.lrp.canonize import UnfoldedBatchNorm

EPS = 1e-5
GRAPH = Graph((Conv("conv1", (INPUT,), 4, (1, 1), use_bias=False), BatchNorm("bn1", ("conv1",), EPS),
               Conv("conv2", (INPUT,), 4, (1, 1), use_bias=False), BatchNorm("bn2", ("conv2",), EPS),
               Add("add", ("bn1", "bn2")), Relu("relu", ("add",)), GlobalAvgPool("pool", ("relu",)),
               Dense("head", ("pool",), 2)), "head")


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    params, stats = {}, {}
    for name in ("1", "2"):
        params[f"conv{name}"] = {"kernel": rng.normal(size=(1, 1, 3, 4)).astype(np.float32)}
        params[f"bn{name}"] = {"scale": rng.uniform(0.5, 2, 4).astype(np.float32),
                               "bias": rng.normal(size=4).astype(np.float32)}
        stats[f"bn{name}"] = {"mean": rng.normal(size=4).astype(np.float32),
                              "var": rng.uniform(0.5, 2, 4).astype(np.float32)}
    params["head"] = {"kernel": rng.normal(size=(4, 2)).astype(np.float32),
                      "bias": rng.normal(size=2).astype(np.float32)}
    return {"params": params, "batch_stats": stats}


def _divide(a, b):
    return a / np.where(b == 0, 1.0, b)  # 0 / 0 -> 0: a unit without input passes no relevance


def _numpy_lrp0(variables, images, batch_norm):
    """Logits and relevance (2, n, h, w, 3) of the network's LRP-0 in float64, BatchNorm y = a * f + t (a: the
    conv output) folded, or by iNNvestigate 1.0.8's rule R_a = a * f / y * R_y, or by 2.1.2's
    R_a = 2 a+ k+ / (a+ k+ + b+) R_y - a+ k- / (a+ k- + b-) R_y, k = gamma / sqrt(var^2 + eps),
    b = beta - mean / sqrt(var^2 + eps)."""
    p, s = variables["params"], variables["batch_stats"]
    x = images.astype(np.float64)
    branches = []
    for name in ("1", "2"):
        kernel = p[f"conv{name}"]["kernel"][0, 0].astype(np.float64)
        bn, st = p[f"bn{name}"], s[f"bn{name}"]
        f = bn["scale"] / np.sqrt(st["var"].astype(np.float64) + EPS)
        t = bn["bias"] - st["mean"] * f
        a = x @ kernel
        root = np.sqrt(st["var"].astype(np.float64) ** 2 + EPS)
        branches.append((kernel, f, a, a * f + t, bn["scale"] / root, bn["bias"] - st["mean"] / root))
    total = branches[0][3] + branches[1][3]
    r = np.maximum(total, 0)
    pooled = r.mean(axis=(1, 2))
    logits = pooled @ p["head"]["kernel"] + p["head"]["bias"]
    relevance = []
    for out in range(logits.shape[1]):
        r_logit = np.zeros_like(logits)
        r_logit[:, out] = logits[:, out]
        r_pool = _divide(pooled[:, :, None] * p["head"]["kernel"][None], logits[:, None]) * r_logit[:, None]
        r_pool = r_pool.sum(-1)
        r_relu = _divide(r / (r.shape[1] * r.shape[2]), pooled[:, None, None]) * r_pool[:, None, None]
        r_x = 0
        for kernel, f, a, y, k, b in branches:
            r_y = _divide(y, total) * r_relu  # the Add: z-rule
            positive = np.maximum(a, 0)
            if batch_norm == "innvestigate":
                r_a = (2 * _divide(positive * np.maximum(k, 0), positive * np.maximum(k, 0) + np.maximum(b, 0))
                       - _divide(positive * np.minimum(k, 0), positive * np.minimum(k, 0) + np.minimum(b, 0))) * r_y
                weights = kernel
            elif batch_norm == "innvestigate_v1":
                r_a, weights = _divide(a * f, y) * r_y, kernel
            else:  # folded: one conv a * f + t
                r_a, weights = r_y, kernel * f
            z = x @ weights + (y - a * f if batch_norm == "fold" else 0)
            r_x = r_x + x * (_divide(r_a, z) @ weights.T)
        relevance.append(r_x)
    return logits, np.stack(relevance)


@pytest.mark.parametrize("batch_norm", ["fold", "innvestigate", "innvestigate_v1"])
def test_batch_norm_treatment_matches_numpy(batch_norm):
    variables = _variables()
    images = np.random.default_rng(1).uniform(size=(2, 5, 5, 3)).astype(np.float32)
    canonical = lrp.canonize(variables, GRAPH, batch_norm=batch_norm)
    kept = [n.name for n in canonical.graph.nodes if isinstance(n, UnfoldedBatchNorm)]
    assert kept == ([] if batch_norm == "fold" else ["bn1", "bn2"])
    logits, relevance = lrp.make_explain_fn("all_z")(canonical, images)
    expected_logits, expected = _numpy_lrp0(variables, images, batch_norm)
    np.testing.assert_allclose(logits, graph_lib.apply(GRAPH, variables, images), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(relevance, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_the_treatments_differ_and_fold_is_the_default():
    variables = _variables()
    images = np.random.default_rng(1).uniform(size=(2, 5, 5, 3)).astype(np.float32)
    assert default.get_config().explain.batch_norm == "fold"
    fold = lrp.make_explain_fn("paper")(lrp.canonize(variables, GRAPH, batch_norm="fold"), images)[1]
    plain = lrp.make_explain_fn("paper")(lrp.canonize(variables, GRAPH), images)[1]
    np.testing.assert_array_equal(fold, plain)
    for treatment in ("innvestigate", "innvestigate_v1"):
        kept = lrp.make_explain_fn("paper")(lrp.canonize(variables, GRAPH, batch_norm=treatment), images)[1]
        assert np.all(np.isfinite(jax.device_get(kept)))
        assert not np.allclose(fold, kept, rtol=1e-2)  # the BatchNorm shifts absorb (or add) relevance


def test_unknown_batch_norm_treatment_is_one_clear_error():
    with pytest.raises(ValueError, match="batch_norm 'keep'.*fold, innvestigate, innvestigate_v1"):
        lrp.canonize(_variables(), GRAPH, batch_norm="keep")
