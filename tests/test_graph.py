"""aujax.graph: construction is validated naming the node, nodes are hashable, and the reference forward pass of every
node kind equals PyTorch's layer of the same settings (asymmetric padding, dilation, groups, ceil mode, NCHW flatten).
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aujax import graph as g


def small_graph(output="probability"):
    nodes = [g.Conv("block/conv", ("input",), 4, (3, 3)), g.Relu("block/relu", ("block/conv",)),
             g.Add("add", ("block/relu", "block/conv")), g.GlobalAvgPool("pool", ("add",)),
             g.Dense("head", ("pool",), 2), g.Sigmoid("probability", ("head",))]
    return g.Graph(nodes if output == "probability" else nodes[:-1], output)


def test_graphs_are_hashable_values_with_a_logit_node():
    assert hash(small_graph()) == hash(small_graph()) and small_graph() == small_graph()
    assert small_graph().logit == "head" and small_graph(output="head").logit == "head"
    assert [n.name for n in small_graph().consumers("block/conv")] == ["block/relu", "add"]


@pytest.mark.parametrize("nodes, message", [
    ([g.Relu("a", ("input",)), g.Relu("a", ("a",))], "graph node a: the name is used twice"),
    ([g.Relu("a", ("nowhere",))], "graph node a: input 'nowhere' is no node"),
    ([g.Relu("a", ("b",)), g.Relu("b", ("a",))], "graph node a: input 'b' comes later"),
    ([g.Relu("a", ("input",)), g.Add("b", ("a",))], "graph node b: Add with 1 inputs"),
    ([g.Relu("a", ("input", "input"))], "graph node a: Relu with 2 inputs"),
    ([g.Sigmoid("a", ("input",)), g.Relu("b", ("a",))], "graph node a: Sigmoid is supported only as the output"),
])
def test_bad_graphs_are_refused_naming_the_node(nodes, message):
    with pytest.raises(ValueError, match=message):
        g.Graph(nodes, nodes[-1].name)


def test_an_unknown_output_and_missing_parameters_are_refused():
    with pytest.raises(ValueError, match="graph output 'nothing'"):
        small_graph(output="nothing")
    with pytest.raises(ValueError, match="graph node block/conv: variables lack"):
        g.apply(small_graph(), {"params": {}}, jnp.zeros((1, 5, 5, 3)))


def nchw(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture
def images():
    return jnp.asarray(np.random.default_rng(0).normal(size=(2, 11, 13, 6)), jnp.float32)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("window, stride, pad", [(3, 2, 1), (2, 2, 0), (3, 3, 1)])
def test_pools_equal_torch(images, window, stride, pad, ceil_mode):
    settings = dict(window=(window, window), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    ceil_mode=ceil_mode)
    expected = torch.nn.functional.max_pool2d(nchw(images), window, stride, pad, ceil_mode=ceil_mode)
    np.testing.assert_allclose(g.max_pool(g.MaxPool("p", ("input",), **settings), images), nhwc(expected))
    for include in (False, True):
        expected = torch.nn.functional.avg_pool2d(nchw(images), window, stride, pad, ceil_mode=ceil_mode,
                                                  count_include_pad=include)
        got = g.avg_pool(g.AvgPool("p", ("input",), **settings, count_include_pad=include), images)
        np.testing.assert_allclose(got, nhwc(expected), rtol=1e-5, atol=1e-6)


def test_a_graph_of_every_kind_equals_the_same_torch_network(images):
    """Asymmetric padding, dilation, groups, BatchNorm, an input Affine, Clip, LeakyRelu, Concat, Add, NCHW flatten
    into a dense layer, and a trailing Softmax: the same weights give the same outputs."""
    rng = np.random.default_rng(1)

    def draw(*shape):
        return rng.normal(size=shape).astype(np.float32)

    nodes = (g.Affine("normalise", ("input",)),
             g.Conv("a/conv", ("normalise",), 6, (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2), groups=2),
             g.BatchNorm("a/bn", ("a/conv",)), g.Clip("a/relu6", ("a/bn",), 0.0, 6.0),
             g.LeakyRelu("leaky", ("a/conv",), 0.1), g.Concat("cat", ("a/relu6", "leaky")),
             g.Conv("b", ("cat",), 12, (1, 1), use_bias=False), g.Add("sum", ("b", "cat", "cat")),
             g.Identity("dropout", ("sum",)), g.Flatten("flat", ("dropout",), "NCHW"),
             g.Dense("head", ("flat",), 3), g.Softmax("probability", ("head",)))
    conv_kernel, b_kernel = draw(3, 2, 3, 6), draw(1, 1, 12, 12)
    flat = 6 * 12 * 12  # h: (11 + 3 - 3) // 2 + 1, w: 13 + 1 - (2 - 1) * 2, channels 6 + 6
    params = {"normalise": {"scale": draw(6), "shift": draw(6)},
              "a": {"conv": {"kernel": conv_kernel, "bias": draw(6)}, "bn": {"scale": draw(6), "bias": draw(6)}},
              "b": {"kernel": b_kernel}, "head": {"kernel": draw(flat, 3), "bias": draw(3)}}
    stats = {"a": {"bn": {"mean": draw(6), "var": draw(6) ** 2 + 0.1}}}
    got = g.apply(g.Graph(nodes, "probability"), {"params": params, "batch_stats": stats}, images)

    def t(a):
        return torch.tensor(np.asarray(a))

    x = nchw(images) * t(params["normalise"]["scale"])[:, None, None] + t(params["normalise"]["shift"])[:, None, None]
    x = torch.nn.functional.pad(x, (0, 1, 1, 2))  # (left, right, top, bottom)
    z = torch.nn.functional.conv2d(x, t(conv_kernel.transpose(3, 2, 0, 1)), t(params["a"]["conv"]["bias"]),
                                   stride=(2, 1), dilation=(1, 2), groups=2)
    bn = torch.nn.functional.batch_norm(z, t(stats["a"]["bn"]["mean"]), t(stats["a"]["bn"]["var"]),
                                        t(params["a"]["bn"]["scale"]), t(params["a"]["bn"]["bias"]), eps=1e-5)
    cat = torch.cat([torch.clamp(bn, 0, 6), torch.nn.functional.leaky_relu(z, 0.1)], dim=1)
    total = torch.nn.functional.conv2d(cat, t(b_kernel.transpose(3, 2, 0, 1))) + 2 * cat
    logits = total.flatten(1) @ t(params["head"]["kernel"]) + t(params["head"]["bias"])
    np.testing.assert_allclose(got, torch.softmax(logits, -1).numpy(), rtol=1e-5, atol=1e-6)
    assert g.output_size(g.Graph(nodes, "probability"), {"params": params, "batch_stats": stats}, (11, 13, 6)) == 3
