"""The model zoo: every architecture has torchvision's parameter count at full width, trains in the Flax module built
from its graph (whose eval output the graph's reference forward pass reproduces), and is explained by the graph
engine with LRP's identities: all-z = gradient x input, the z-rule without biases conserves the logit, z+ conserves up
to the relevance it drops. Tiny widths, 2 images of 32x32 (every architecture is fully convolutional up to its global
pooling), random weights with random BatchNorm statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision

from aujax import graph as graph_lib
from aujax import model
from aujax.lrp import budget, canonize, get_composite, make_explain_fn, rules, without_biases
from aujax.lrp.explainer import node_rule, output_seeds
from tests.support import randomized_variables, sample_images

ZOO_WIDTHS = {"resnet34": (4, 4, 8, 8), "resnet50": (2, 2, 4, 4),
              "vgg11_bn": (4, 4, 8, 8, 8), "mobilenet_v2": (4, 4, 4, 4, 4, 4, 4, 4, 8)}
ZOO = sorted(ZOO_WIDTHS)  # resnet18's training and LRP identities: test_train.py, test_lrp_network.py
SIZE = 32


def totals(relevance) -> np.ndarray:
    """(outputs, n, ...) -> (outputs, n)."""
    relevance = np.asarray(relevance, np.float64)
    return relevance.reshape(relevance.shape[:2] + (-1,)).sum(-1)


@pytest.mark.parametrize("name, torchvision_name", [("resnet18", "resnet18"), ("resnet34", "resnet34"),
                                                    ("resnet50", "resnet50"), ("mobilenet_v2", "mobilenet_v2")])
def test_full_width_parameter_counts_are_torchvisions(name, torchvision_name):
    network = model.create_model("full", num_outputs=8, name=name)
    shapes = jax.eval_shape(lambda: model.init_variables(network, jax.random.key(0)))
    torch_count = sum(p.numel() for p in getattr(torchvision.models, torchvision_name)(num_classes=8).parameters())
    assert model.parameter_count(shapes["params"]) == torch_count


def test_vgg11_bn_features_are_torchvisions():
    """VGG's classifier reads the global average pool here (8x the last width wide, no 7x7 adaptive pool)."""
    shapes = jax.eval_shape(lambda: model.init_variables(model.create_model("full", 8, "vgg11_bn"), jax.random.key(0)))
    features = sum(p.numel() for p in torchvision.models.vgg11_bn().features.parameters())
    classifier = model.parameter_count({k: v for k, v in shapes["params"].items() if k.startswith(("fc", "head"))})
    assert model.parameter_count(shapes["params"]) - classifier == features
    assert classifier == 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 8 + 8


def test_widths_resolve_per_architecture_and_bad_ones_are_refused():
    assert model.resolve_widths("tiny", "mobilenet_v2") == (8, 4, 6, 8, 16, 24, 40, 80, 320)
    assert model.resolve_widths("4,4,8,8,8", "vgg11_bn") == (4, 4, 8, 8, 8)
    with pytest.raises(ValueError, match="expected 5 positive integers for vgg11_bn"):
        model.resolve_widths("4,8,8,8", "vgg11_bn")
    with pytest.raises(ValueError, match=r"model name 'alexnet' \(--model, config.model.name\): expected one of "
                                         "resnet18, resnet34"):
        model.create_model("tiny", name="alexnet")


@pytest.mark.slow  # one train step and one eval forward pass compiled per architecture: ~5-10 s each
@pytest.mark.parametrize("name", ZOO)
def test_every_architecture_trains_and_its_graph_computes_the_same_logits(name):
    network = model.create_model(ZOO_WIDTHS[name], name=name)
    variables = randomized_variables(0, widths=ZOO_WIDTHS[name], name=name)
    images = sample_images(2, seed=2, size=SIZE)

    @jax.jit
    def loss_and_grads(params):
        def loss(params):
            logits, updates = network.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                                            train=True, mutable=["batch_stats"])
            return jnp.mean(logits ** 2), updates
        return jax.value_and_grad(loss, has_aux=True)(params)

    (value, updates), grads = loss_and_grads(variables["params"])
    assert np.isfinite(float(value)) and all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == jax.tree_util.tree_structure(
            variables["batch_stats"])
    eval_logits = jax.jit(lambda v, x: network.apply(v, x, train=False))(variables, images)
    # flax normalises (x - mean) * scale / sqrt(var + eps), the graph x * factor + shift: float32 rounding apart
    np.testing.assert_allclose(graph_lib.apply(network.graph, variables, images), eval_logits, rtol=1e-5,
                               atol=1e-5 * float(np.abs(eval_logits).max()))
    assert model.graph_of_variables(variables) == model.create_graph(name, ZOO_WIDTHS[name])


@pytest.mark.slow  # compiles LRP and the gradient of each architecture in float64: 10-40 s each on 2 cores
@pytest.mark.parametrize("name", ZOO)
def test_all_z_equals_gradient_times_input(name):
    graph = model.create_graph(name, ZOO_WIDTHS[name])
    with jax.enable_x64(True):
        # BatchNorm variances x 4 halve its factors, which keeps every ReLU6 input below the cap (asserted below)
        variables = jax.tree_util.tree_map_with_path(
                lambda path, a: a.astype(jnp.float64) * (4.0 if path[-1].key == "var" else 1.0),
                randomized_variables(1, widths=ZOO_WIDTHS[name], name=name))
        images = sample_images(2, seed=3, size=SIZE).astype(jnp.float64)
        for clip in [n for n in graph.nodes if isinstance(n, graph_lib.Clip)]:  # LRP-0 = gx only below ReLU6's cap
            assert float(graph_lib.apply(graph, variables, images, output=clip.inputs[0]).max()) < clip.high, clip.name
        logits, backward = jax.vjp(lambda x: graph_lib.apply(graph, variables, x), images)
        (gradients,) = jax.vmap(backward)(output_seeds(logits, get_composite("gradient")))
        lrp_logits, relevance = make_explain_fn("all_z")(canonize(variables, graph), images)
        np.testing.assert_allclose(lrp_logits, logits, rtol=1e-12)
        expected = np.asarray(gradients * images)
        # the z-rule's 1e-12 stabilizer is the only difference: ~1e-12 / |z| for the smallest pre-activations z
        for output in range(logits.shape[-1]):
            np.testing.assert_allclose(relevance[output], expected[output], rtol=0,
                                       atol=1e-7 * np.abs(expected[output]).max(), err_msg=f"{name} output {output}")


@pytest.mark.slow  # compiles two relevance traces per architecture: 10-30 s each on 2 cores
@pytest.mark.parametrize("name", ZOO)
def test_z_conserves_the_logit_and_zplus_conserves_up_to_what_it_drops(name):
    canonical = without_biases(canonize(randomized_variables(2, with_biases=False, widths=ZOO_WIDTHS[name], name=name),
                                        model.create_graph(name, ZOO_WIDTHS[name])))
    images = sample_images(2, seed=4, size=SIZE)
    trace_fn = jax.jit(budget.trace_relevance, static_argnums=2)

    composite = get_composite("all_z")
    trace = trace_fn(canonical, images, composite)
    logits = np.asarray(trace.logits, np.float64).T  # (outputs, n)
    scale = np.abs(logits).max()
    np.testing.assert_allclose(totals(trace.relevance), logits, rtol=1e-4, atol=1e-5 * scale)
    for node_name, entry in budget.budget_from_trace(canonical, trace, composite).items():
        np.testing.assert_allclose(entry["relevance_in"], entry["relevance_out"], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=node_name)

    composite = get_composite("paper")
    trace = trace_fn(canonical, images, composite)
    scale = np.abs(np.asarray(trace.logits)).max()
    entries = budget.budget_from_trace(canonical, trace, composite)
    zplus = 0
    for node in canonical.graph.nodes:
        rule = node_rule(composite, canonical.graph, node)
        if node.name not in entries or rule is None or rule.name in ("epsilon", "flat"):
            continue  # ε absorbs by design; flat is conservative (checked through the pixels below)
        # computed here from the definitions (biases are zero): a z+ unit passes R_k z+_k / (z+_k + e) on (z+_k: the sum
        # of the positive x_j w_jk), a sum
        # or pool output R_k z_k / stabilize(z_k); where that denominator's z is zero the relevance is dropped
        relevance_out = trace.at_taps[f"{node.name}/out"]
        if rule.name == "zplus":
            x, kernel = trace.activations[f"{node.name}/in"], canonical[node.name]["kernel"]
            z = (graph_lib.conv(node, jnp.maximum(x, 0), jnp.maximum(kernel, 0))  # the positive contributions
                 + graph_lib.conv(node, jnp.minimum(x, 0), jnp.minimum(kernel, 0)))[None]
            zplus += 1
        else:
            z = trace.activations[f"{node.name}/out"][None]
        np.testing.assert_allclose(entries[node.name]["dropped"], totals(jnp.where(z == 0, relevance_out, 0.0)),
                                   rtol=1e-6, atol=1e-9, err_msg=node.name)
        np.testing.assert_allclose(entries[node.name]["relevance_in"],
                                   totals(relevance_out * z / rules.stabilize(z, rule.stabilizer)), rtol=1e-4,
                                   atol=1e-6 * scale, err_msg=node.name)
    assert zplus >= 3
    first = next(n for n in canonical.graph.nodes if isinstance(n, graph_lib.Conv))
    np.testing.assert_allclose(totals(trace.relevance), totals(trace.at_taps[f"{first.name}/in"]), rtol=1e-6,
                               atol=1e-7 * scale)
