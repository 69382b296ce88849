"""Agreement with Zennit (PyTorch), the reference LRP implementation, on the same weights.

The torch model is torchvision's BasicBlock structure with our widths, loaded with our weights and BatchNorm
statistics; BatchNorm is folded on the torch side with torch's own `fuse_conv_bn_eval` (an independent folding), and
Zennit's ResNetBasicBlockCanonizer turns the residual additions into its Sum layer. Zennit runs one backward pass
per AU; ours runs one vmapped backward pass for all 8.
"""

import importlib.metadata
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -r tests/requirements.txt)")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install -r tests/requirements.txt)")
zennit = pytest.importorskip("zennit", reason="zennit is not installed (pip install -r tests/requirements.txt)")

from PIL import Image  # noqa: E402
from torchvision.models.resnet import BasicBlock  # noqa: E402
from zennit import composites as zennit_composites  # noqa: E402
from zennit.torchvision import ResNetBasicBlockCanonizer  # noqa: E402

from aujax import facs, model  # noqa: E402
from aujax.lrp import DEFAULT_EPSILON, canonize, make_explain_fn, pixel_heatmaps  # noqa: E402
from experiments.torch_reference import fold_batch_norm_torch  # noqa: E402
from tests.support import LRP_WIDTHS, randomized_variables, sample_images  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
pytestmark = pytest.mark.slow  # a reference library (torch and Zennit)


class TorchResNet18(torch.nn.Module):
    """torchvision's resnet18 layout (conv1, bn1, relu, maxpool, layer1..4 of BasicBlocks, avgpool, fc) with
    configurable widths."""

    def __init__(self, widths, outputs=facs.NUM_AUS):
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
    net = TorchResNet18(LRP_WIDTHS).eval()
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


def zennit_composite(name: str, images_nchw):
    canonizers = [ResNetBasicBlockCanonizer()]
    if name == "paper":
        return zennit_composites.EpsilonPlusFlat(epsilon=DEFAULT_EPSILON, canonizers=canonizers)
    if name == "epsilon_alpha2_beta1_flat":
        return zennit_composites.EpsilonAlpha2Beta1Flat(epsilon=DEFAULT_EPSILON, canonizers=canonizers)
    if name == "epsilon_gamma_box":
        return zennit_composites.EpsilonGammaBox(low=torch.zeros_like(images_nchw), high=torch.ones_like(images_nchw),
                                                 epsilon=DEFAULT_EPSILON, canonizers=canonizers)
    raise AssertionError(name)


def zennit_pixel_heatmaps(net, composite, images_nchw) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, 8) and pixel heatmaps (8, n, h, w): per AU a Zennit forward and backward pass, seed one-hot x
    logit."""
    heatmaps = []
    with composite.context(net) as modified:
        for au in range(facs.NUM_AUS):
            images = images_nchw.clone().requires_grad_(True)
            logits = modified(images)
            seed = logits.detach() * torch.eye(facs.NUM_AUS)[au]
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
    for au in range(facs.NUM_AUS):
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
