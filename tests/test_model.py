import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aujax import graph
from aujax import model as model_lib


def _expected_parameter_count(widths, outputs=8):
    """ResNet-18 count from first principles: convs without bias, BN scale+bias, dense with bias."""
    w0 = widths[0]
    count = 7 * 7 * 3 * w0 + 2 * w0
    previous = w0
    for stage, w in enumerate(widths):
        for block in range(2):
            count += 3 * 3 * previous * w + 2 * w + 3 * 3 * w * w + 2 * w
            if model_lib.stage_strides(stage, block) != 1 or previous != w:
                count += previous * w + 2 * w
            previous = w
    return count + previous * outputs + outputs


@pytest.mark.parametrize("preset", sorted(model_lib.WIDTH_PRESETS))
def test_parameter_count_of_each_preset(preset):
    widths = model_lib.WIDTH_PRESETS[preset]
    # shapes only (jax.eval_shape): initialising the full model eagerly on a 2-core CPU takes seconds
    variables = jax.eval_shape(functools.partial(model_lib.init_variables, model_lib.create_model(preset)),
                               jax.random.key(0))
    assert model_lib.parameter_count(variables["params"]) == _expected_parameter_count(widths)
    if preset == "full":  # torchvision resnet18(num_classes=8) has exactly this many
        assert model_lib.parameter_count(variables["params"]) == 11_180_616


@pytest.mark.slow  # a ResNet-18 applied eagerly: > 5 s on 2 cores
def test_output_shape_train_versus_eval_and_determinism():
    model = model_lib.create_model((4, 8, 8, 8))
    variables = model_lib.init_variables(model, jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (3, 112, 112, 3))
    eval_logits = model.apply(variables, images, train=False)
    assert eval_logits.shape == (3, 8) and eval_logits.dtype == jnp.float32
    train_logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert train_logits.shape == (3, 8)
    # train mode normalises with the batch's statistics and updates the running ones; eval mode uses the running ones
    assert not np.allclose(train_logits, eval_logits, atol=1e-4)
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    np.testing.assert_array_equal(eval_logits, model.apply(variables, images, train=False))
    again = model_lib.init_variables(model, jax.random.key(1))
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)


def test_stage_resolutions_match_resnet_at_112():
    network = model_lib.create_model((4, 8, 8, 8))
    variables = jax.eval_shape(lambda: model_lib.init_variables(network, jax.random.key(0)))
    images = jax.ShapeDtypeStruct((1, 112, 112, 3), jnp.float32)
    outputs = [f"{model_lib.block_name(stage, 1)}/relu" for stage in range(4)]
    sizes = [jax.eval_shape(lambda v, x, o=o: graph.apply(network.graph, v, x, output=o), variables, images).shape[1]
             for o in outputs]
    assert sizes == [28, 14, 7, 4]


def test_parameters_nest_by_the_node_names():
    """The layout of every checkpoint written before the graph: e.g. params['stage2_block1']['proj_bn']['scale']."""
    network = model_lib.create_model((4, 8, 8, 8))
    variables = jax.eval_shape(lambda: model_lib.init_variables(network, jax.random.key(0)))
    assert sorted(variables["params"]) == ["head", "stage1_block1", "stage1_block2", "stage2_block1", "stage2_block2",
                                           "stage3_block1", "stage3_block2", "stage4_block1", "stage4_block2",
                                           "stem_bn", "stem_conv"]
    assert sorted(variables["params"]["stage2_block1"]) == ["bn1", "bn2", "conv1", "conv2", "proj_bn", "proj_conv"]
    assert sorted(variables["batch_stats"]["stage2_block1"]["proj_bn"]) == ["mean", "var"]
    for node in network.graph.nodes:
        if isinstance(node, (graph.Conv, graph.Dense, graph.BatchNorm)):
            assert graph.lookup(variables["params"], node.name) is not None, node.name


@pytest.mark.parametrize("bad", ["huge", "1,2,3", "0,8,8,8", "a,b,c,d"])
def test_bad_widths_are_refused_with_the_value(bad):
    with pytest.raises(ValueError, match="width"):
        model_lib.resolve_widths(bad)
