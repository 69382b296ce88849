"""Models trained elsewhere through ONNX (`aujax.lrp.load_onnx`) and their model cards (`aujax.lrp.card`).

A small PyTorch network that uses every op family the converter supports (unfolded BatchNorm, grouped and dilated
convolutions, per-axis padding, ceil-mode pools, LeakyReLU, Clip, a residual Add, Concat, a Shape-chain Reshape,
ReduceMean, MatMul + Add, Softmax, normalisation inside the model) is exported by torch and read back: its outputs
equal PyTorch's for an NCHW RGB card, an NHWC card (the model transposes its input, as tf2onnx's do) and a BGR card.
Every refusal is one line naming the file and the problem. `--mode=explain_model` writes Table 3 for the AUs of the
card, counting the AUs the PyTorch model itself predicts correctly. The torchvision architectures and the agreement of
their heatmaps with Zennit are in tests/test_lrp_zennit.py.
"""

import json

import jax
import numpy as np
import pytest

from aujax import graph as graph_lib
from aujax.lrp import card as card_lib
from aujax.lrp.onnx import load_onnx
from tests.support import _assert_one_error_line, _main, child_env, patch_records

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -r tests/requirements.txt)")
pytest.importorskip("onnx", reason="onnx is not installed (pip install -r requirements.txt)")

HEIGHT, WIDTH = 40, 56  # not square, so that a swapped height and width shows
MEAN, STD = (0.2, 0.5, 0.7), (0.3, 0.6, 0.9)  # one value per channel, so that a channel order mistake shows
OUTPUTS = {4: 0, 6: 1, 25: 2}


class KitchenSink(torch.nn.Module):
    """Every op family of `aujax.lrp.onnx.SUPPORTED_OPS` at a few channels; `nhwc`: takes (n, h, w, 3) input."""

    def __init__(self, nhwc: bool = False, outputs: int = 3):
        super().__init__()
        self.nhwc = nhwc
        self.register_buffer("centre", torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1))
        self.conv1 = torch.nn.Conv2d(3, 6, 3, stride=2, padding=(1, 2))
        self.bn1 = torch.nn.BatchNorm2d(6)
        self.depthwise = torch.nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(6)
        self.avg = torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.max = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.grouped = torch.nn.Conv2d(12, 4, 1, groups=2)
        self.weight = torch.nn.Parameter(torch.randn(4 + 4 * 11 * 15, outputs) * 0.1)
        self.bias = torch.nn.Parameter(torch.randn(outputs))
        for norm in (self.bn1, self.bn2):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
            torch.nn.init.uniform_(norm.bias, -0.3, 0.3)

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        x = (x - self.centre) * 1.5  # Sub, Mul by constants
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.nn.functional.leaky_relu(self.bn2(self.depthwise(x)), 0.2)
        x = torch.clamp(x + y, 0.0, 6.0)  # Add, Clip
        x = self.grouped(torch.cat([self.avg(x), self.max(x)], dim=1))  # (n, 4, 11, 15)
        pooled = x.mean(dim=(2, 3))  # ReduceMean
        flat = torch.relu(x).reshape(x.size(0), -1)  # a Reshape fed by a Shape chain
        return torch.softmax(torch.cat([pooled, flat], dim=1) @ self.weight + self.bias, dim=1)  # MatMul, Add


def _export(net, path, input_shape, do_constant_folding=False) -> str:
    torch.onnx.export(net.eval(), torch.rand(1, *input_shape), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                      do_constant_folding=do_constant_folding)
    return str(path)


def _card(**fields) -> dict:
    return {"input_size": [HEIGHT, WIDTH], "layout": "NCHW", "channel_order": "RGB", "mean": list(MEAN),
            "std": list(STD), "outputs": {str(au): i for au, i in OUTPUTS.items()}, "output_activation": "softmax",
            **fields}


def _images(n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, HEIGHT, WIDTH, 3)).astype(np.float32)


def _torch_outputs(net, model_input: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(np.ascontiguousarray(model_input))).numpy()


def _normalised(images, order=slice(None)) -> np.ndarray:
    """What the model sees: (pixels in the model's channel order - mean) / std."""
    return (images[..., order] - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


@pytest.fixture(scope="module")
def kitchen_sink():
    torch.manual_seed(0)
    return KitchenSink()


@pytest.fixture(scope="module")
def kitchen_sink_file(kitchen_sink, tmp_path_factory):
    return _export(kitchen_sink, tmp_path_factory.mktemp("onnx") / "sink.onnx", (3, HEIGHT, WIDTH))


def _assert_outputs_equal(model, images, expected):
    got = np.asarray(jax.jit(lambda v, x: graph_lib.apply(model.graph, v, x))(model.variables, images))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_every_supported_op_family_computes_what_pytorch_does(kitchen_sink, kitchen_sink_file):
    import onnx

    ops = {node.op_type for node in onnx.load(kitchen_sink_file).graph.node}
    assert {"BatchNormalization", "Shape", "Reshape", "ReduceMean", "MatMul", "Concat", "Clip", "LeakyRelu",
            "AveragePool", "MaxPool", "Softmax", "Sub", "Mul"} <= ops, ops  # what this test is about
    model = load_onnx(kitchen_sink_file, _card())
    kinds = {type(node).__name__ for node in model.graph.nodes}
    assert {"BatchNorm", "Affine", "Conv", "Dense", "Flatten", "GlobalAvgPool", "Concat", "Softmax"} <= kinds
    assert model.au_ids == (4, 6, 25) and model.outputs == (0, 1, 2)
    images = _images()
    _assert_outputs_equal(model, images, _torch_outputs(kitchen_sink, np.transpose(_normalised(images),
                                                                                   (0, 3, 1, 2))))


def test_an_nhwc_model_takes_the_same_images(tmp_path):
    torch.manual_seed(1)
    net = KitchenSink(nhwc=True)
    path = _export(net, tmp_path / "nhwc.onnx", (HEIGHT, WIDTH, 3), do_constant_folding=True)
    model = load_onnx(path, _card(layout="NHWC"))
    images = _images()
    _assert_outputs_equal(model, images, _torch_outputs(net, _normalised(images)))


def test_a_bgr_model_is_given_rgb_images_and_its_mean_in_its_own_order(kitchen_sink, kitchen_sink_file):
    model = load_onnx(kitchen_sink_file, _card(channel_order="BGR"))
    images = _images()
    bgr = _normalised(images, order=slice(None, None, -1))
    _assert_outputs_equal(model, images, _torch_outputs(kitchen_sink, np.transpose(bgr, (0, 3, 1, 2))))


def test_the_card_beside_the_model_is_read_and_a_missing_activation_is_added(tmp_path):
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    path = _export(net, tmp_path / "logits.onnx", (3, HEIGHT, WIDTH), do_constant_folding=True)
    (tmp_path / "logits.card.json").write_text(json.dumps(_card(outputs={"4": 1, "AU6": 0},
                                                                output_activation="sigmoid")))
    model = load_onnx(path)
    assert isinstance(model.graph.node(model.graph.output), graph_lib.Sigmoid)
    assert model.au_ids == (6, 4) and model.outputs == (0, 1)  # in the order of the output indices
    images = _images()
    logits = _torch_outputs(net, np.transpose(_normalised(images), (0, 3, 1, 2)))
    _assert_outputs_equal(model, images, 1 / (1 + np.exp(-logits)))
    got = graph_lib.apply(model.graph, model.variables, images, output=model.graph.logit)
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Refusals: one line each, naming the file and the problem


def _one_line_error(fn, *fragments) -> str:
    with pytest.raises(ValueError) as raised:
        fn()
    message = str(raised.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


class Sine(torch.nn.Module):
    def forward(self, x):
        return torch.sin(x).mean(dim=(2, 3))


class Product(torch.nn.Module):
    def forward(self, x):
        return (x * x).mean(dim=(2, 3))


def test_an_unsupported_op_is_refused_naming_the_node_the_op_and_the_supported_ops(tmp_path):
    path = _export(Sine(), tmp_path / "sine.onnx", (3, HEIGHT, WIDTH))
    _one_line_error(lambda: load_onnx(path, _card()), path, "/Sin", "(Sin)", "unsupported op", "Conv, ")
    path = _export(Product(), tmp_path / "product.onnx", (3, HEIGHT, WIDTH))
    _one_line_error(lambda: load_onnx(path, _card()), path, "(Mul)", "Mul of two computed tensors")


def test_a_card_that_does_not_match_the_model_is_refused(kitchen_sink_file, tmp_path):
    static = _export(Sine(), tmp_path / "static.onnx", (3, HEIGHT, WIDTH))
    _one_line_error(lambda: load_onnx(kitchen_sink_file, _card(input_size=[HEIGHT, HEIGHT])), kitchen_sink_file,
                    "does not match", f"[{HEIGHT}, {HEIGHT}]", f"3x{HEIGHT}x{WIDTH}")
    _one_line_error(lambda: load_onnx(static, _card(layout="NHWC")), static, "does not match", "layout NHWC")
    _one_line_error(lambda: load_onnx(kitchen_sink_file, _card(outputs={"4": 0, "6": 3})), kitchen_sink_file,
                    "{6: 3}", "beyond the 3 outputs")
    _one_line_error(lambda: load_onnx(kitchen_sink_file, _card(output_activation="none")), kitchen_sink_file,
                    "output_activation is 'none'", "ends in a Softmax")


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    for name, content in (("text.onnx", b"not a model\n"), ("card.onnx", json.dumps(_card()).encode()),
                          ("empty.onnx", b"")):
        path = tmp_path / name
        path.write_bytes(content)
        _one_line_error(lambda: load_onnx(str(path), _card()), str(path), "is not an ONNX model")
    _one_line_error(lambda: load_onnx(str(tmp_path / "absent.onnx"), _card()), "absent.onnx", "no such file")


def test_card_fields_are_checked_one_line_each(tmp_path):
    fields = _card()
    assert card_lib.make_card(fields).to_json() == fields
    cases = [({k: v for k, v in fields.items() if k != "std"}, "lacks std"),
             ({**fields, "scale": 255}, "unknown fields scale"),
             ({**fields, "layout": "CHW"}, 'layout="CHW", expected "NCHW" or "NHWC"'),
             ({**fields, "channel_order": "rgb"}, "channel_order"),
             ({**fields, "input_size": [112]}, "input_size=[112]"),
             ({**fields, "mean": [0.5, 0.5]}, "mean=[0.5, 0.5], expected 3 numbers"),
             ({**fields, "std": [1, 0, 1]}, "3 positive numbers"),
             ({**fields, "outputs": {"4": 0, "6": 0}}, "distinct indices"),
             ({**fields, "outputs": {"brow": 0}}, "outputs="),
             ({**fields, "output_activation": "relu"}, "output_activation")]
    for value, fragment in cases:
        _one_line_error(lambda: card_lib.make_card(value, where="model card c.json"), "model card c.json", fragment)
    path = tmp_path / "bad.card.json"
    path.write_text("{not json")
    _one_line_error(lambda: card_lib.read_card(str(path)), str(path), "not a JSON file")
    _one_line_error(lambda: load_onnx(str(tmp_path / "m.onnx")), str(tmp_path / "m.card.json"), "no such file")


# ----------------------------------------------------------------------------------------------------------------
# The command line: --mode=explain_model


@pytest.mark.slow  # a command-line run
def test_explain_model_writes_table3_for_the_aus_of_the_card(tmp_path):
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 7, 2, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(3, 2, 1), torch.nn.Conv2d(4, 8, 3, 2, 1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    records = patch_records(2, 8, seed=7, prefix="S")
    records.save(str(tmp_path / "faces.npz"))
    pixels = np.transpose(_normalised(records.image / np.float32(255)), (0, 3, 1, 2))
    with torch.no_grad():  # each output's threshold inside the range of its logits: a different AU set is predicted
        net[-1].bias -= torch.from_numpy(np.median(_torch_outputs(net, pixels), axis=0)) + 1e-3
    path = _export(net, tmp_path / "au.onnx", (3, 112, 112), do_constant_folding=True)
    card = _card(input_size=[112, 112], outputs={"25": 0, "4": 2, "6": 1}, output_activation="sigmoid")
    (tmp_path / "au.card.json").write_text(json.dumps(card))
    workdir = tmp_path / "run"
    result = _main("--mode=explain_model", f"--model_file={path}", f"--data={tmp_path / 'faces.npz'}",
                   f"--workdir={workdir}", "--config.explain.compare=('gradient_x_input',)",
                   "--config.explain.metrics=('mu',)", "--config.explain.batch_size=4",
                   "--config.explain.grid_images=2", "--config.explain.examples_per_panel=1", env_extra=child_env())
    assert result.returncode == 0, result.stderr[-3000:]

    table3 = json.loads((workdir / "results" / "table3_mu.json").read_text())["rows"]
    scores = next(row["scores"] for row in table3 if row["method"].endswith(" paper"))
    assert list(scores) == ["AU4", "AU6", "AU25"]  # the card's AUs, in the dataset's order
    # n (+ the excluded) per AU: the AUs the PyTorch model itself predicts correctly
    logits = _torch_outputs(net, pixels)
    predicted = logits[:, [2, 1, 0]] >= 0  # sigmoid >= 0.5 at the outputs of AU4, AU6, AU25
    correct = (predicted & (records.with_aus((4, 6, 25)).labels == 1)).sum(0)
    assert [scores[au]["n"] + scores[au]["n_excluded"] for au in scores] == correct.tolist()
    assert correct.sum() > 0
    for name in ("table_mu_f1.json", "mu_per_subject.csv", "figures/heatmaps_cv.png", "figures/figure1_regions.png"):
        assert (workdir / "results" / name).is_file(), name
    assert (workdir / "report.html").is_file()

    refused = _main("--mode=explain_model", f"--model_file={path}", f"--data={tmp_path / 'faces.npz'}",
                    f"--workdir={tmp_path / 'other'}", '--model_card={"input_size": [112, 112]}', env_extra=child_env())
    _assert_one_error_line(refused, "--model_card lacks layout")
