"""LRP on the whole ResNet-18: canonization, LRP-0 = gradient x input, conservation, z+ drops, API contract, and
the heatmaps of the hand-written engine the graph engine replaced (tests/data/resnet18_reference)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aujax import checkpoints, distributed, model
from aujax import graph as graph_lib
from aujax.lrp import (COMPOSITES, ExplainableNetwork, budget, canonize, explain, explain_with_logits,
                       get_composite, make_explain_fn, pixel_heatmaps, rules, without_biases)
from aujax.lrp.explainer import lrp_forward, node_rule, output_seeds
from tests.support import LRP_WIDTHS, REPO, randomized_variables, sample_images

NUM_OUTPUTS = 8  # model.create_model's default
REFERENCE = os.path.join(REPO, "tests", "data", "resnet18_reference")


@jax.jit
def model_logits(variables, images):
    return model.create_model(LRP_WIDTHS).apply(variables, images, train=False)


def relative_error(got, expected) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def totals(relevance) -> np.ndarray:
    """(8, n, ...) -> (8, n)."""
    relevance = np.asarray(relevance, np.float64)
    return relevance.reshape(relevance.shape[:2] + (-1,)).sum(-1)


def canonization_case():
    """A graph with an input normalisation before a padded strided conv, a conv + BatchNorm, a BatchNorm after a
    ReLU (it cannot fold backwards) before a dense node, a BatchNorm whose conv has two readers, dropout and a
    trailing sigmoid; variables with random values."""
    nodes = (graph_lib.Affine("normalise", ("input",)),
             graph_lib.Conv("stem/conv", ("normalise",), 4, (3, 3), (2, 2), ((1, 1), (1, 1))),
             graph_lib.BatchNorm("stem/bn", ("stem/conv",)), graph_lib.Relu("relu", ("stem/bn",)),
             graph_lib.Conv("side", ("relu",), 4, (1, 1), use_bias=False),
             graph_lib.BatchNorm("side_bn", ("side",)), graph_lib.Add("add", ("side_bn", "side")),
             graph_lib.Identity("dropout", ("add",)), graph_lib.GlobalAvgPool("pool", ("dropout",)),
             graph_lib.BatchNorm("pool_bn", ("pool",)), graph_lib.Dense("head", ("pool_bn",), 3),
             graph_lib.Sigmoid("probability", ("head",)))
    rng = np.random.default_rng(0)

    def draw(*shape, low=None):
        return jnp.asarray(rng.uniform(low, 2.0, shape) if low else rng.normal(size=shape), jnp.float32)

    def bn():
        return {"scale": draw(4), "bias": draw(4)}, {"mean": draw(4), "var": draw(4, low=0.3)}

    (stem_bn, stem_stats), (side_bn, side_stats), (pool_bn, pool_stats) = bn(), bn(), bn()
    params = {"normalise": {"scale": draw(3, low=1.0), "shift": draw(3)},
              "stem": {"conv": {"kernel": draw(3, 3, 3, 4), "bias": draw(4)}, "bn": stem_bn},
              "side": {"kernel": draw(1, 1, 4, 4)}, "side_bn": side_bn, "pool_bn": pool_bn,
              "head": {"kernel": draw(4, 3), "bias": draw(3)}}
    stats = {"stem": {"bn": stem_stats}, "side_bn": side_stats, "pool_bn": pool_stats}
    return graph_lib.Graph(nodes, "probability"), {"params": params, "batch_stats": stats}


def test_canonization_folds_where_exact_and_computes_the_logits():
    """Folded: the input normalisation into the padded stem conv (a bias map exact at the border), the stem's
    BatchNorm into it, the pooled BatchNorm into the head; kept as an affine node: the BatchNorm of a conv that
    another node reads too; gone: dropout and the sigmoid. The canonical network computes the graph's logits."""
    graph, variables = canonization_case()
    canonical = canonize(variables, graph)
    kinds = {node.name: type(node).__name__ for node in canonical.graph.nodes}
    assert kinds == {"stem/conv": "Conv", "relu": "Relu", "side": "Conv", "side_bn": "Affine", "add": "Add",
                     "pool": "GlobalAvgPool", "head": "Dense"}
    assert canonical.graph.output == "head" and canonical.graph.node("stem/conv").inputs == ("input",)
    assert canonical["stem/conv"]["bias_kernel"].shape == (3, 3, 3, 4)
    images = sample_images(2, size=9)
    expected = graph_lib.apply(graph, variables, images, output="head")
    for name in ("gradient", "paper"):
        got = jax.jit(lambda c, x: lrp_forward(c, x, get_composite(name))[0])(canonical, images)
        assert relative_error(got, expected) < 1e-5, name
    # zero padding of the normalised input is not zero padding of the pixels: the folded bias differs at the border
    bias_map = np.asarray(canonical["stem/conv"]["bias"] + jax.lax.conv_general_dilated(
            jnp.ones((1, 9, 9, 3)), canonical["stem/conv"]["bias_kernel"], (2, 2), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC")))
    assert np.abs(bias_map[0, 0, 0] - bias_map[0, 2, 2]).max() > 1e-2


def test_a_network_of_unknown_variables_needs_its_graph():
    with pytest.raises(ValueError, match="fit none of aujax's architectures"):
        canonize(canonization_case()[1])


def test_canonical_network_computes_the_model_logits():
    variables = randomized_variables(0)
    images = sample_images(3)
    expected = model_logits(variables, images)
    canonical = canonize(variables)
    assert canonical.graph == canonize(variables, model.create_graph("resnet18", LRP_WIDTHS)).graph  # recognised
    got = jax.jit(lambda c, x: lrp_forward(c, x, get_composite("gradient"))[0])(canonical, images)
    assert relative_error(got, expected) < 1e-5
    assert np.abs(np.asarray(canonical["stage2_block1/proj_conv"]["bias"])).max() > 0.01  # folding made biases


@pytest.mark.slow  # compiles LRP of a ResNet-18: > 5 s on 2 cores
def test_lrp0_equals_gradient_times_input_of_the_original_network():
    """float64: all_z on the canonized network (biases included) = gradient x input of model.apply with BN."""
    with jax.enable_x64(True):
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), randomized_variables(1))
        images = sample_images(2, seed=3).astype(jnp.float64)
        logits, backward = jax.vjp(lambda x: model_logits(variables, x), images)
        (gradients,) = jax.vmap(backward)(output_seeds(logits, get_composite("gradient")))
        expected = gradients * images
        lrp_logits, relevance = make_explain_fn("all_z")(canonize(variables), images)
        assert relevance.dtype == jnp.float64
        assert relative_error(lrp_logits, logits) < 1e-12
        # the z-rule's 1e-12 stabilizer is the only difference: ~1e-12 / |z| for the smallest pre-activations z
        for au in range(NUM_OUTPUTS):
            assert relative_error(relevance[au], expected[au]) < 1e-7


@pytest.fixture(scope="module")
def bias_free_canonical():
    return without_biases(canonize(randomized_variables(2)))


@pytest.mark.slow  # compiles LRP of a ResNet-18: > 5 s on 2 cores
def test_z_rule_conserves_relevance_layer_by_layer(bias_free_canonical):
    composite = get_composite("all_z")
    trace = jax.jit(budget.trace_relevance, static_argnums=2)(bias_free_canonical, sample_images(2, seed=4),
                                                              composite)
    logits = np.asarray(trace.logits, np.float64).T  # (8, n)
    np.testing.assert_allclose(totals(trace.at_taps["head/out"]), logits, rtol=1e-6)  # the seed
    np.testing.assert_allclose(totals(trace.relevance), logits, rtol=1e-4, atol=1e-6)
    entries = budget.budget_from_trace(bias_free_canonical, trace, composite)
    linear = [n for n in bias_free_canonical.graph.nodes if isinstance(n, graph_lib.LINEAR)]
    assert len(entries) == len(linear) + 8 + 2  # + 8 additions + 2 pools
    scale = np.abs(logits).max()
    for name, entry in entries.items():
        np.testing.assert_allclose(entry["relevance_in"], entry["relevance_out"], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)
        np.testing.assert_array_equal(entry["dropped"], 0.0)
    np.testing.assert_allclose(totals(trace.at_taps["stem_conv/in"]), totals(trace.relevance), rtol=1e-6)


@pytest.mark.slow  # compiles LRP of a ResNet-18: > 5 s on 2 cores
def test_zplus_conserves_except_the_relevance_of_units_with_zero_positive_preactivation(bias_free_canonical):
    """Make half the conv2 output channels of a block purely inhibitory: their z+ denominators are zero everywhere and
    the relevance the residual split gives them (non-zero: the branch output is negative there) is dropped."""
    dead = "stage2_block1"
    conv2 = bias_free_canonical[f"{dead}/conv2"]
    kernel = conv2["kernel"].at[..., :4].set(-jnp.abs(conv2["kernel"][..., :4]))
    canonical = dataclasses.replace(bias_free_canonical, params=graph_lib.with_entry(
            bias_free_canonical.params, f"{dead}/conv2", {**conv2, "kernel": kernel}))
    composite = get_composite("paper")
    trace = jax.jit(budget.trace_relevance, static_argnums=2)(canonical, sample_images(2, seed=5), composite)
    entries = budget.budget_from_trace(canonical, trace, composite)
    scale = np.abs(np.asarray(trace.logits)).max()
    for node in canonical.graph.nodes:
        if node_rule(composite, canonical.graph, node) != rules.zplus_rule():
            continue
        name = node.name
        # computed here from the definition z+_k = sum_j x_j max(w_jk, 0): units with z+ = 0 drop their relevance,
        # the others pass R_k z+_k / (z+_k + stabilizer) on (biases are zero)
        x = trace.activations[f"{name}/in"]
        assert float(x.min()) >= 0.0, name
        positive_preactivation = graph_lib.conv(node, x, jnp.maximum(canonical[name]["kernel"], 0))[None]
        relevance_out = trace.at_taps[f"{name}/out"]
        dropped = totals(jnp.where(positive_preactivation == 0, relevance_out, 0.0))
        passed_on = totals(relevance_out * positive_preactivation / (positive_preactivation + rules.STABILIZER))
        np.testing.assert_allclose(entries[name]["dropped"], dropped, rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(entries[name]["relevance_in"], passed_on, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=name)
        np.testing.assert_allclose(entries[name]["relevance_in"], totals(relevance_out) - dropped, rtol=1e-3,
                                   atol=1e-5 * scale, err_msg=name)
    # the drop is far above the tolerance of the exact check, so ignoring it would fail
    dead_entry = entries[f"{dead}/conv2"]
    assert (np.abs(dead_entry["dropped"]) > 10 * (1e-5 * np.abs(dead_entry["relevance_in"]) + 1e-6 * scale)).all()
    # the sums, pools and the flat stem conserve; the ε head absorbs
    for name in ["max_pool", "global_pool", f"{dead}/add", "stem_conv"]:
        np.testing.assert_allclose(entries[name]["relevance_in"], entries[name]["relevance_out"], rtol=1e-4,
                                   atol=1e-5 * scale, err_msg=name)
    shares = budget.budget_shares(entries)
    assert shares[f"{dead}/conv2"]["dropped_share"] > 0 and shares["total"]["dropped_share"] >= \
        shares[f"{dead}/conv2"]["dropped_share"]


def test_relevance_budget_of_a_model_with_biases():
    entries = budget.relevance_budget(randomized_variables(3), sample_images(2, seed=6), "paper")
    assert list(entries)[:3] == ["stem_conv", "max_pool", "stage1_block1/conv1"] and list(entries)[-1] == "head"
    for name, entry in entries.items():
        for key in ("relevance_in", "relevance_out", "dropped"):
            assert entry[key].shape == (8, 2) and np.isfinite(entry[key]).all(), (name, key)
    table = budget.budget_table(entries)
    assert "| stage2_block1/proj_conv |" in table and "| total |" in table
    with pytest.raises(ValueError, match="gradient baseline"):
        budget.relevance_budget(randomized_variables(3), sample_images(1), "gradient")


def with_dead_units(variables: dict) -> dict:
    """Stem channel 0 and stage1_block1/conv1 channel 1 never fire (weights <= 0, BN keeps the output <= 0)."""
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    for parent, conv, bn, channel in [(params, "stem_conv", "stem_bn", 0),
                                      (params["stage1_block1"], "conv1", "bn1", 1)]:
        kernel = parent[conv]["kernel"]
        parent[conv]["kernel"] = kernel.at[..., channel].set(-jnp.abs(kernel[..., channel]))
        parent[bn]["scale"] = parent[bn]["scale"].at[channel].set(1.0)
        parent[bn]["bias"] = parent[bn]["bias"].at[channel].set(-1.0)
    stats = jax.tree_util.tree_map(lambda a: a, variables["batch_stats"])
    for parent, bn, channel in [(stats, "stem_bn", 0), (stats["stage1_block1"], "bn1", 1)]:
        parent[bn]["mean"] = parent[bn]["mean"].at[channel].set(0.0)
    return {"params": params, "batch_stats": stats}


@pytest.mark.slow  # compiles LRP of a ResNet-18: > 5 s on 2 cores
def test_no_nan_or_inf_for_any_composite_on_extreme_images_and_dead_units():
    variables = with_dead_units(randomized_variables(4))
    noise = sample_images(1, seed=7)[0]
    half = jnp.zeros_like(noise).at[:56].set(1.0)
    images = jnp.stack([jnp.zeros_like(noise), jnp.ones_like(noise), noise, half])  # batches of 2, as elsewhere
    canonical = canonize(variables)
    stem = jax.lax.conv_general_dilated(images, canonical["stem_conv"]["kernel"], (2, 2), ((3, 3), (3, 3)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + canonical["stem_conv"]["bias"]
    assert float(stem[..., 0].max()) < 0  # the dead unit really never fires
    expected_logits = model_logits(variables, images)
    for name in COMPOSITES:
        explain_fn = make_explain_fn(name)
        outputs = [explain_fn(canonical, images[i:i + 2]) for i in (0, 2)]
        logits = jnp.concatenate([logits for logits, _ in outputs])
        relevance = jnp.concatenate([relevance for _, relevance in outputs], axis=1)
        assert np.isfinite(np.asarray(relevance)).all(), name
        assert relative_error(logits, expected_logits) < 1e-5, name
        assert np.abs(np.asarray(relevance[:, 2])).max() > 0, name  # noise gets some relevance


@pytest.mark.slow  # compiles LRP of a ResNet-18: > 5 s on 2 cores
def test_explain_api_order_vmap_and_jit():
    """Public API: shapes, AU order = seed order (sums = logits under all_z without biases), and the vmapped
    backward equals 8 separate backward passes (jit versus eager is checked per layer function in
    test_lrp_rules.py: eager runs of the whole network compile every operation on its own and are slow)."""
    variables = randomized_variables(5, with_biases=False)
    images = sample_images(2, seed=8)
    logits, relevance = explain_with_logits(variables, images, "all_z")
    assert logits.shape == (2, 8) and relevance.shape == (8, 2, 112, 112, 3) and relevance.dtype == jnp.float32
    np.testing.assert_allclose(totals(relevance), np.asarray(logits, np.float64).T, rtol=1e-4, atol=1e-6)
    assert pixel_heatmaps(relevance).shape == (8, 2, 112, 112)
    np.testing.assert_allclose(pixel_heatmaps(relevance).sum(axis=(2, 3)), totals(relevance), rtol=1e-5, atol=1e-6)

    canonical = canonize(variables)
    logits, relevance = make_explain_fn("paper")(canonical, images)
    np.testing.assert_allclose(explain(variables, images), relevance, rtol=1e-6, atol=1e-7)
    assert make_explain_fn("paper") is make_explain_fn("paper")  # compiled once

    @jax.jit
    def one_au(canonical, images, au_one_hot):
        """A separate forward and backward pass for one AU: seed one-hot(a) x logit a."""
        logits, backward = jax.vjp(lambda x: lrp_forward(canonical, x, get_composite("paper"))[0], images)
        return backward(au_one_hot * logits)[0]

    for au in range(NUM_OUTPUTS):
        single = one_au(canonical, images, jnp.eye(NUM_OUTPUTS)[au])
        np.testing.assert_allclose(relevance[au], single, rtol=1e-5, atol=1e-6 * float(np.abs(single).max()))


@pytest.mark.slow  # compiles LRP of a ResNet-18: > 5 s on 2 cores
def test_gradient_baselines_and_bad_arguments():
    """gradient x input = LRP-0 (proven against model.apply above), and gradient x images = gradient x input."""
    variables = randomized_variables(6)
    images = sample_images(2, seed=9)
    gradient_x_input = explain(variables, images, "gradient_x_input")
    scale = float(np.abs(gradient_x_input).max())
    np.testing.assert_allclose(gradient_x_input, explain(variables, images, "all_z"), rtol=1e-3, atol=1e-5 * scale)
    np.testing.assert_allclose(explain(variables, images, "gradient") * images, gradient_x_input, rtol=1e-6,
                               atol=1e-7 * scale)
    with pytest.raises(ValueError, match="paper, epsilon_alpha2_beta1_flat"):
        explain(variables, images, "lrp_magic")
    with pytest.raises(ValueError, match="expected"):
        explain(variables, images[0])  # no batch axis
    with pytest.raises(ValueError, match="uint8"):
        explain(variables, (images * 255).astype(jnp.uint8))
    with pytest.raises(ValueError, match="batch_stats"):
        explain({"params": variables["params"]}, images)


@pytest.fixture(scope="module")
def reference_network():
    """The checkpoint written before the graph engine, restored as the pipeline restores it, and its images."""
    variables = checkpoints.restore_variables(model.create_model(LRP_WIDTHS), os.path.join(REFERENCE, "checkpoint"),
                                              distributed.make_mesh())
    return variables, jnp.asarray(np.load(os.path.join(REFERENCE, "images.npy")), jnp.float32) / 255.0


@pytest.mark.parametrize("composite", ["paper"] + [pytest.param(name, marks=pytest.mark.slow)  # 5-15 s each
                                                   for name in ("epsilon_gamma_box", "all_z", "gradient_x_input")])
def test_the_heatmaps_of_the_hand_written_engine_are_reproduced(reference_network, composite):
    """The graph engine computes the operations of the engine it replaced in the same order (it gave identical bits
    on the 2-core CPU it replaced it on); 1e-5 of max |R| leaves room for another XLA's fusion and reassociation of
    float32 sums (~1e-7 relative each), while a changed rule, stabilizer, seed or layer moves heatmaps by > 1e-2."""
    variables, images = reference_network
    logits, relevance = explain_with_logits(variables, images, composite)
    np.testing.assert_allclose(logits, np.load(os.path.join(REFERENCE, "logits.npy")), rtol=1e-5, atol=1e-6)
    reference = np.load(os.path.join(REFERENCE, f"heatmaps_{composite}.npy"))
    assert relevance.shape == (NUM_OUTPUTS, 2, 64, 64, 3)
    np.testing.assert_allclose(pixel_heatmaps(relevance), reference, rtol=0, atol=1e-5 * np.abs(reference).max())


def test_an_explainable_network_selects_and_orders_its_outputs(reference_network):
    variables, images = reference_network
    graph = model.create_graph("resnet18", LRP_WIDTHS)
    full_logits, full = explain_with_logits(variables, images, "paper", graph=graph)
    logits, relevance = explain_with_logits(ExplainableNetwork(graph, variables, outputs=(5, 2)), images, "paper")
    full_logits, full = np.asarray(full_logits), np.asarray(full)
    np.testing.assert_array_equal(logits, full_logits[:, [5, 2]])
    np.testing.assert_allclose(relevance, full[[5, 2]], rtol=1e-6, atol=1e-7 * float(np.abs(full).max()))
