"""LRP on the whole ResNet-18: canonization, LRP-0 = gradient x input, conservation, z+ drops, API contract."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aujax import facs, model
from aujax.lrp import (COMPOSITES, budget, canonize, explain, explain_with_logits, fold_batch_norm, get_composite,
                       make_explain_fn, pixel_heatmaps, rules, without_biases)
from aujax.lrp.explainer import linear_layers, lrp_forward, output_seeds
from tests.support import LRP_WIDTHS, randomized_variables, sample_images


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


def test_folding_one_batch_norm_keeps_the_conv_output():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (2, 9, 9, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 5, 6)), jnp.float32)
    scale, beta, mean = (jnp.asarray(rng.normal(size=6), jnp.float32) for _ in range(3))
    var = jnp.asarray(rng.uniform(0.2, 3.0, 6), jnp.float32)
    conv = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    batch_norm = nn.BatchNorm(use_running_average=True, epsilon=model.BATCH_NORM_EPSILON)
    expected = batch_norm.apply({"params": {"scale": scale, "bias": beta},
                                 "batch_stats": {"mean": mean, "var": var}}, conv)
    folded = fold_batch_norm(kernel, scale, beta, mean, var)
    got = jax.lax.conv_general_dilated(x, folded["kernel"], (2, 2), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + folded["bias"]
    assert relative_error(got, expected) < 1e-5


def test_canonical_network_computes_the_model_logits():
    variables = randomized_variables(0)
    images = sample_images(3)
    expected = model_logits(variables, images)
    canonical = canonize(variables)
    got = jax.jit(lambda c, x: lrp_forward(c, x, get_composite("gradient"))[0])(canonical, images)
    assert relative_error(got, expected) < 1e-5
    assert np.abs(np.asarray(canonical["stage2_block1"]["proj_conv"]["bias"])).max() > 0.01  # folding made biases


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
        for au in range(facs.NUM_AUS):
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
    assert len(entries) == len(linear_layers(bias_free_canonical)) + 8 + 2  # + 8 additions + 2 pools
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
    canonical = jax.tree_util.tree_map(lambda a: a, bias_free_canonical)
    kernel = canonical[dead]["conv2"]["kernel"]
    canonical[dead]["conv2"]["kernel"] = kernel.at[..., :4].set(-jnp.abs(kernel[..., :4]))
    composite = get_composite("paper")
    trace = jax.jit(budget.trace_relevance, static_argnums=2)(canonical, sample_images(2, seed=5), composite)
    entries = budget.budget_from_trace(canonical, trace, composite)
    scale = np.abs(np.asarray(trace.logits)).max()
    for name, layer in linear_layers(canonical).items():
        if composite.linear_rule(layer.spec.kind, layer.first).name != "zplus":
            continue
        # computed here from the definition z+_k = sum_j x_j max(w_jk, 0): units with z+ = 0 drop their relevance,
        # the others pass R_k z+_k / (z+_k + stabilizer) on (biases are zero)
        x = trace.activations[f"{name}/in"]
        assert float(x.min()) >= 0.0, name
        positive_preactivation = jax.lax.conv_general_dilated(
                x, jnp.maximum(layer.kernel, 0), (layer.spec.strides,) * 2, ((layer.spec.padding,) * 2,) * 2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"))[None]
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

    for au in range(facs.NUM_AUS):
        single = one_au(canonical, images, jnp.eye(facs.NUM_AUS)[au])
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
