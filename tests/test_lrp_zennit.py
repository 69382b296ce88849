"""Agreement with Zennit (PyTorch), the reference LRP implementation, on the same weights.

Our ResNet-18: the torch model is torchvision's BasicBlock structure with our widths, loaded with our weights and
BatchNorm statistics; BatchNorm is folded on the torch side with torch's own `fuse_conv_bn_eval` (an independent
folding), and Zennit's ResNetBasicBlockCanonizer turns the residual additions into its Sum layer. Zennit runs one
backward pass per AU; ours runs one vmapped backward pass for all 8.

torchvision's resnet18, resnet50, vgg11_bn and mobilenet_v2 (random weights and BatchNorm statistics) exported to
ONNX at 112x112 and read by `aujax.lrp.load_onnx` with an ImageNet-normalised card: our logits equal PyTorch's and our
heatmaps Zennit's, which explains the torch model itself (BatchNorm merged by Zennit, the input normalisation outside
the model, the zB box in normalised units), in float64 on both sides.
"""

import copy
import importlib.metadata
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -r tests/requirements.txt)")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install -r tests/requirements.txt)")
zennit = pytest.importorskip("zennit", reason="zennit is not installed (pip install -r tests/requirements.txt)")

from PIL import Image  # noqa: E402
from torchvision.models.resnet import BasicBlock  # noqa: E402
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2  # noqa: E402
from zennit import composites as zennit_composites  # noqa: E402
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.torchvision import (ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer)  # noqa: E402

from aujax import facs, model  # noqa: E402
from aujax import graph as graph_lib  # noqa: E402
from aujax.lrp import DEFAULT_EPSILON, canonize, make_explain_fn, pixel_heatmaps  # noqa: E402
from aujax.lrp.onnx import load_onnx  # noqa: E402
from experiments.torch_reference import fold_batch_norm_torch  # noqa: E402
from tests.support import (IMAGENET_MEAN, IMAGENET_STD, LRP_WIDTHS, TORCHVISION_ARCHITECTURES,  # noqa: E402
                           export_onnx, imagenet_card, randomized_variables, sample_images, torch_logits,
                           torchvision_model)

DATA = os.path.join(os.path.dirname(__file__), "data")
pytestmark = pytest.mark.slow  # a reference library (torch and Zennit)


class TorchResNet18(torch.nn.Module):
    """torchvision's resnet18 layout (conv1, bn1, relu, maxpool, layer1..4 of BasicBlocks, avgpool, fc) with
    configurable widths."""

    def __init__(self, widths, outputs):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(widths[0], eps=model.BATCH_NORM_EPSILON)
        self.relu = torch.nn.ReLU()
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        inplanes = widths[0]
        for stage, planes in enumerate(widths):
            blocks = []
            for block in range(model.BLOCKS_PER_STAGE):
                strides = model.stage_strides(stage, block)
                downsample = None
                if strides != 1 or inplanes != planes:
                    downsample = torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes, 1, strides, bias=False),
                                                     torch.nn.BatchNorm2d(planes, eps=model.BATCH_NORM_EPSILON))
                blocks.append(BasicBlock(inplanes, planes, strides, downsample))
                inplanes = planes
            setattr(self, f"layer{stage + 1}", torch.nn.Sequential(*blocks))
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(widths[-1], outputs)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _tensor(array):
    return torch.from_numpy(np.array(array, np.float32))


def _load_conv_bn(conv, bn, params_conv, params_bn, stats_bn):
    conv.weight.data = _tensor(np.transpose(params_conv["kernel"], (3, 2, 0, 1)))
    bn.weight.data, bn.bias.data = _tensor(params_bn["scale"]), _tensor(params_bn["bias"])
    bn.running_mean.data, bn.running_var.data = _tensor(stats_bn["mean"]), _tensor(stats_bn["var"])


def torch_model_with_folded_batch_norm(variables) -> TorchResNet18:
    """Our weights in the torch model; every BatchNorm fused into its conv by torch (`fuse_conv_bn_eval`, as the
    benchmark does it for torchvision's resnet18), then replaced by Identity."""
    params, stats = variables["params"], variables["batch_stats"]
    net = TorchResNet18(LRP_WIDTHS, outputs=params["head"]["bias"].shape[0]).eval()
    _load_conv_bn(net.conv1, net.bn1, params["stem_conv"], params["stem_bn"], stats["stem_bn"])
    for stage in range(4):
        for index, block in enumerate(getattr(net, f"layer{stage + 1}")):
            name = model.block_name(stage, index)
            for conv, bn in [("conv1", "bn1"), ("conv2", "bn2")]:
                _load_conv_bn(getattr(block, conv), getattr(block, bn), params[name][conv], params[name][bn],
                              stats[name][bn])
            if block.downsample is not None:
                _load_conv_bn(block.downsample[0], block.downsample[1], params[name]["proj_conv"],
                              params[name]["proj_bn"], stats[name]["proj_bn"])
    net.fc.weight.data, net.fc.bias.data = _tensor(np.transpose(params["head"]["kernel"])), _tensor(
            params["head"]["bias"])
    return fold_batch_norm_torch(net)


def zennit_composite(name: str, images_nchw, canonizers=None, low=0.0, high=1.0):
    """Zennit's counterpart of our composite `name`; `low` and `high` bound the input (the zB box), in the units the
    torch model's input has."""
    canonizers = [ResNetBasicBlockCanonizer()] if canonizers is None else canonizers
    if name == "paper":
        return zennit_composites.EpsilonPlusFlat(epsilon=DEFAULT_EPSILON, canonizers=canonizers)
    if name == "epsilon_alpha2_beta1_flat":
        return zennit_composites.EpsilonAlpha2Beta1Flat(epsilon=DEFAULT_EPSILON, canonizers=canonizers)
    if name == "epsilon_gamma_box":
        return zennit_composites.EpsilonGammaBox(low=torch.zeros_like(images_nchw) + low,
                                                 high=torch.zeros_like(images_nchw) + high,
                                                 epsilon=DEFAULT_EPSILON, canonizers=canonizers)
    raise AssertionError(name)


def zennit_pixel_heatmaps(net, composite, images_nchw) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, k) and pixel heatmaps (k, n, h, w) of the k outputs of `net`: per output a Zennit forward and
    backward pass, seed one-hot x logit."""
    heatmaps = []
    with composite.context(net) as modified:
        with torch.no_grad():
            count = modified(images_nchw).shape[1]
        for output in range(count):
            images = images_nchw.clone().requires_grad_(True)
            logits = modified(images)
            seed = logits.detach() * torch.eye(count, dtype=logits.dtype)[output]
            (relevance,) = torch.autograd.grad(logits, images, grad_outputs=seed)
            heatmaps.append(relevance.sum(1).numpy())
    return logits.detach().numpy(), np.stack(heatmaps)


def face_and_noise_images() -> np.ndarray:
    """(2, 112, 112, 3) in [0, 1]: the astronaut photograph resized, and uniform noise."""
    face = Image.open(os.path.join(DATA, "astronaut.png")).convert("RGB").resize((facs.IMAGE_SIZE,) * 2)
    return np.stack([np.asarray(face, np.float32) / 255.0, np.asarray(sample_images(1, seed=11)[0])])


@pytest.fixture(scope="module")
def one_torch_thread():
    """A tiny model: torch's spinning worker threads would only fight XLA's for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["paper", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box"])
def test_composite_agrees_with_zennit(name, one_torch_thread):
    variables = randomized_variables(8)
    images = face_and_noise_images()
    net = torch_model_with_folded_batch_norm(variables)
    images_nchw = torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))))
    torch_logits, expected = zennit_pixel_heatmaps(net, zennit_composite(name, images_nchw), images_nchw)

    logits, relevance = make_explain_fn(name)(canonize(variables), images)
    got = np.asarray(pixel_heatmaps(relevance), np.float64)
    np.testing.assert_allclose(logits, torch_logits, rtol=1e-4, atol=1e-4 * np.abs(torch_logits).max())
    correlations, max_differences = [], []
    for au in range(len(got)):
        for image in range(len(images)):
            a, b = got[au, image].ravel(), expected[au, image].ravel().astype(np.float64)
            correlations.append(np.corrcoef(a, b)[0, 1])
            max_differences.append(np.abs(a - b).max() / np.abs(b).max())
    version = importlib.metadata.version("zennit")
    print(f"\n{name} vs Zennit {version}: per-heatmap correlation min {min(correlations):.8f} "
          f"(1 - r max {1 - min(correlations):.1e}); max |difference| / max |R| max {max(max_differences):.2e} "
          f"mean {np.mean(max_differences):.2e}; logits max |difference| {np.abs(logits - torch_logits).max():.2e}")
    assert min(correlations) > 0.9999
    assert max(max_differences) < 1e-3


# ----------------------------------------------------------------------------------------------------------------
# torchvision architectures through ONNX

TORCHVISION_OUTPUTS = {4: 0, 25: 1}  # AU -> output index of the card


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """Zennit's SequentialMergeBatchNorm, but the merged BatchNorm becomes the identity: Zennit keeps its eps, so each
    merged BatchNorm still divides by sqrt(1 + eps) (5e-6 per layer, 1e-4 of the logits over resnet18's 20)."""

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.eps, batch_norm.eps = batch_norm.eps, 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.eps


class InvertedResidualCanonizer(AttributeCanonizer):
    """The residual addition of torchvision's MobileNetV2 blocks as Zennit's Sum layer (Zennit has no MobileNetV2
    canonizer), so that its z-rule applies there as ours does."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))


class MobileNetV2PoolCanonizer(AttributeCanonizer):
    """MobileNetV2's global average pool (a functional call) as a module, so that Zennit's AvgPool rule (the z-rule,
    as ours) applies to it rather than its gradient."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, MobileNetV2):
            return {"forward": cls.forward.__get__(module), "canonizer_pool": torch.nn.AdaptiveAvgPool2d(1)}
        return None

    @staticmethod
    def forward(self, x):
        return self.classifier(torch.flatten(self.canonizer_pool(self.features(x)), 1))


def zennit_canonizers(architecture: str) -> list:
    """BatchNorm merged exactly, and Zennit's Sum at every residual addition of `architecture`."""
    extra = {"resnet18": [ResNetBasicBlockCanonizer()], "resnet50": [ResNetBottleneckCanonizer()],
             "vgg11_bn": [], "mobilenet_v2": [InvertedResidualCanonizer(), MobileNetV2PoolCanonizer()]}[architecture]
    return [CompositeCanonizer([ExactMergeBatchNorm(), *extra])]


def as_float64(network):
    return network._replace(variables=jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                                             network.variables))


@pytest.fixture(scope="module", params=TORCHVISION_ARCHITECTURES)
def torchvision_onnx(request, tmp_path_factory, one_torch_thread):
    """(architecture, torch model, the model read back from its ONNX export)."""
    net = torchvision_model(request.param, len(TORCHVISION_OUTPUTS))
    path = export_onnx(net, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx",
                       dynamic_batch=request.param != "resnet18")  # one file with a fixed batch of 1
    return request.param, net, load_onnx(path, imagenet_card(TORCHVISION_OUTPUTS))


def test_torchvision_logits_equal_pytorchs(torchvision_onnx):
    architecture, net, network = torchvision_onnx
    images = face_and_noise_images()
    expected = torch_logits(copy.deepcopy(net), images, torch.float64)
    got = np.asarray(graph_lib.apply(network.graph, network.variables, images, output=network.graph.logit))
    relative = np.abs(got - expected).max() / np.abs(expected).max()
    print(f"\n{architecture}: logits max |aujax float32 - torch float64| / max |logit| {relative:.1e}")
    assert relative <= 1e-5


@pytest.mark.parametrize("composite", ["paper", "epsilon_gamma_box"])
def test_torchvision_heatmaps_agree_with_zennit(torchvision_onnx, composite):
    architecture, net, network = torchvision_onnx
    images = face_and_noise_images()[:1]
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    normalised = (torch.from_numpy(np.transpose(images, (0, 3, 1, 2))).to(torch.float64) - mean) / std
    zennit = zennit_composite(composite, normalised, zennit_canonizers(architecture), low=(0 - mean) / std,
                              high=(1 - mean) / std)
    torch_logits_, expected = zennit_pixel_heatmaps(copy.deepcopy(net).double(), zennit, normalised)

    with jax.enable_x64(True):
        logits, relevance = make_explain_fn(composite)(canonize(as_float64(network)), jnp.asarray(images, jnp.float64))
        got = np.asarray(pixel_heatmaps(relevance))
    assert got.dtype == np.float64
    np.testing.assert_allclose(logits, torch_logits_, rtol=1e-6, atol=1e-6 * np.abs(torch_logits_).max())
    a, b = got.reshape(len(got) * len(images), -1), expected.reshape(len(got) * len(images), -1)
    correlations = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]
    relative_l2 = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    print(f"\n{architecture} {composite} vs Zennit {importlib.metadata.version('zennit')} (float64): per-heatmap "
          f"1 - r max {1 - min(correlations):.1e}, relative L2 max {relative_l2.max():.1e}")
    assert min(correlations) >= 0.9999
    assert relative_l2.max() <= 1e-4
