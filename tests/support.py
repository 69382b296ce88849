"""Shared test helpers: tiny models and small learnable face records, the tolerances of cross-layout comparisons,
LRP test variables, and the command line and checkpoint directories as the tests see them.

Tests import these from here (`from tests.support import ...`); no test imports another test module or an
experiment script, and tests/conftest.py holds fixtures and hooks only.
"""

import functools
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aujax import facs, model
from aujax.data.records import FaceRecords

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WIDTHS = (4, 8, 8, 8)
# Compiled programs of the command-line runs of the tests, shared between their processes and sessions (it changes
# how fast, not what is computed).
COMPILATION_CACHE = os.environ.get("AUJAX_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "aujax-test-jax-cache"))
_LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "TPU_WORKER", "JAX_COORDINATOR")


def patch_records(num_subjects: int, per_subject: int, seed: int, prefix: str, name: str = "patches") -> FaceRecords:
    """Records whose AU a is a bright patch at a fixed place: easy to learn, so tests of the machinery stay fast."""
    rng = np.random.default_rng(seed)
    n = num_subjects * per_subject
    labels = (rng.random((n, len(facs.PAIN_AUS))) < 0.35).astype(np.uint8)
    labels[labels.sum(1) == 0, rng.integers(0, len(facs.PAIN_AUS))] = 1
    image = rng.integers(0, 60, (n, facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3)).astype(np.uint8)
    for a in range(len(facs.PAIN_AUS)):
        row, col = divmod(a, 4)
        image[labels[:, a] == 1, 10 + row * 50: 40 + row * 50, 5 + col * 27: 25 + col * 27] += 150
    landmarks = rng.uniform(0, facs.IMAGE_SIZE, (n, facs.NUM_LANDMARKS, 2)).astype(np.float32)
    subject = np.array([f"{prefix}{i // per_subject:03d}" for i in range(n)])
    return FaceRecords(image, landmarks, labels, labels.astype(np.float32), subject,
                       np.array([f"{name}:{i}" for i in range(n)]), name)


# Tolerances for numbers computed by two different programs or layouts (1 vs N devices, 1 vs 2 processes, other
# batch sizes): each says what error it allows for, and why a real defect would exceed it by far.

# Parameters, batch statistics and momentum after a few train steps on two layouts, per leaf in L2 relative to the
# leaf (`tree_relative_difference`): reordered float32 sums moved them by <= 1.0e-5 here (BN-bias gradients are sums
# that cancel, which magnifies their rounding); one image swapped in one batch moves them by >= 3e-2.
CROSS_LAYOUT_REL = 1e-3


def tree_relative_difference(a, b) -> float:
    """The largest ||a_leaf - b_leaf||_2 / ||a_leaf||_2 over the leaves of two pytrees of the same structure."""
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(x), np.finfo(np.float32).tiny)))
    return worst


def float32_ratio_rtol(terms: int) -> float:
    """Worst-case relative error of a ratio of two float32 sums of `terms` terms each, when two programs add them in
    different orders (2 (terms - 1) eps for the two sums): the bound for localisation metrics (μ and kin) computed
    batched against single, jitted against eager, chunked against whole. A wrong pixel, mask or AU moves such a ratio
    by about 1 / terms or more, far beyond it."""
    return 2 * terms * float(np.finfo(np.float32).eps)


def config_with(**fields):
    """The default config with `fields` set, as `--config.model.threshold=1.5` would: config_with(**{"model.threshold":
    1.5})."""
    from aujax.configs import default

    config = default.get_config()
    for name, value in fields.items():
        *parents, leaf = name.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


# ----------------------------------------------------------------------------------------------------------------
# Processes: a fresh interpreter, the command line


def run_python(code: str, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (for XLA flags that must be set before jax is imported)."""
    env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        pytest.fail(f"subprocess failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def child_env(compilation_cache: str = COMPILATION_CACHE) -> dict:
    """The environment of command-line children: plain single processes (a launcher's variables, such as SLURM's,
    left out), the repository importable, compiled programs cached in `compilation_cache`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    return {**inherited, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
            "JAX_COMPILATION_CACHE_DIR": compilation_cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def _main(*args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    """`python -m aujax.main *args` in the repository, its output captured."""
    env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "aujax.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _assert_clean_error(result, *fragments):
    """The command line failed with an `aujax: error:` line holding every fragment, and no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if line.startswith("aujax: error:")]
    assert message, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in message[0], message[0]


def _assert_one_error_line(result, *fragments) -> str:
    """`_assert_clean_error`, exit status 1, and the message is printed once (no log line repeats it); returns the
    message."""
    _assert_clean_error(result, *fragments)
    message = next(line for line in result.stderr.splitlines() if line.startswith("aujax: error:"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count(message.removeprefix("aujax: error: ")) == 1, result.stderr[-3000:]
    return message


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint directories


def saved_steps(checkpoint_dir) -> list[int]:
    """Finished checkpoint steps in an orbax manager directory (tmp directories of interrupted writes excluded)."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())



# ----------------------------------------------------------------------------------------------------------------
# Training one fold in-process


def _cfg(**overrides):
    """A TrainConfig of 2 epochs of batch 8 on the tiny model's fold of `_fold_setup`, with `overrides`."""
    from aujax import train

    values = dict(epochs=2, batch_size=8, learning_rate=0.01, momentum=0.95, seed=3, pos_weight_max=10.0,
                  checkpoint_every_steps=0, threshold=0.5, min_support=1)
    return train.TrainConfig(**{**values, **overrides})


def _fold_setup(cfg):
    """(trainer, fold, data on the devices, labels): fold A000 of 4 patch subjects x 6 images, 18 in training."""
    from aujax import distributed, train

    records = patch_records(4, 6, seed=5, prefix="A")
    mesh = distributed.make_mesh()
    trainer = train.Trainer(model.create_model(TINY_WIDTHS), cfg, mesh)
    fold = train.FoldSpec(0, "A000", np.arange(6, 24), np.arange(6))
    return trainer, fold, train.put_on_devices(records, mesh), records.labels


# ----------------------------------------------------------------------------------------------------------------
# LRP: small ResNet-18 variables with non-trivial BatchNorm statistics

LRP_WIDTHS = (4, 8, 8, 8)


@functools.lru_cache(maxsize=None)
def _variable_shapes(widths: tuple, name: str = "resnet18"):
    """The variable tree of `model.init_variables`, as shapes only (flax's initialisers compile slowly on CPU)."""
    network = model.create_model(widths, name=name)
    return jax.eval_shape(lambda: model.init_variables(network, jax.random.key(0)))


def randomized_variables(seed: int = 0, with_biases: bool = True, widths=LRP_WIDTHS, name: str = "resnet18") -> dict:
    """Variables shaped like `model.init_variables` of architecture `name` with random weights (He scaling) and
    BatchNorm scale/var, and with random BN mean/beta and dense biases when `with_biases`.

    Without biases, BN has mean 0 and beta 0, so folding it creates no bias: the network is then bias-free and
    LRP-0 must conserve relevance exactly.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        key, shape = path[-1].key, leaf.shape
        if key == "kernel":
            values = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif key == "scale":
            values = rng.uniform(0.5, 1.5, shape)
        elif key == "var":
            values = rng.uniform(0.3, 2.0, shape)
        elif key in ("mean", "bias") and with_biases:
            values = rng.normal(0.0, 0.3 if key == "mean" else 0.2, shape)
        else:
            values = np.zeros(shape)
        return jnp.asarray(values, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, _variable_shapes(tuple(widths), name))


def sample_images(n: int, seed: int = 1, size: int = 112) -> jax.Array:
    """(n, size, size, 3) float32 uniform in [0, 1]."""
    return jnp.asarray(np.random.default_rng(seed).uniform(0.0, 1.0, (n, size, size, 3)), jnp.float32)


def write_video(path, frames, fps: float = 10.0) -> str:
    """Write uint8 (H, W, 3) RGB `frames` as a video at `path` (MJPG in .avi, mp4v in .mp4) with OpenCV; its path."""
    import cv2

    height, width = frames[0].shape[:2]
    codec = "mp4v" if str(path).endswith(".mp4") else "MJPG"
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# ONNX: torchvision models with random weights and batch-norm statistics, exported as a user would export them

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_ARCHITECTURES = ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2")


def torchvision_model(name: str, num_outputs: int, seed: int = 0):
    """torchvision's architecture `name` in eval mode with `num_outputs` outputs, random weights and random
    BatchNorm statistics and affine parameters (each BN's statistics are first measured on noise images, so that
    activations neither vanish nor explode through 50 layers, then scattered: folding them is exercised).

    At 112x112 vgg11_bn's features are 3x3, which its AdaptiveAvgPool2d((7, 7)) would upsample and torch.onnx.export
    refuses to export: its avgpool is AdaptiveAvgPool2d((3, 3)) there (the identity, exported as a 1x1 AveragePool)
    and its first classifier layer reads 512 x 3 x 3 features. mobilenet_v2 has width_mult 0.25.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    if name == "mobilenet_v2":
        net = torchvision.models.mobilenet_v2(num_classes=num_outputs, width_mult=0.25)
    else:
        net = getattr(torchvision.models, name)(num_classes=num_outputs)
    if name == "vgg11_bn":
        net.avgpool = torch.nn.AdaptiveAvgPool2d((3, 3))
        net.classifier[0] = torch.nn.Linear(512 * 3 * 3, net.classifier[0].out_features)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0  # the running statistics become those of the one calibration batch
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(seed)))
        for norm in norms:
            c = norm.num_features
            norm.running_mean += 0.2 * torch.randn(c) * norm.running_var.sqrt()
            norm.running_var *= torch.empty(c).uniform_(0.6, 1.6)
            norm.weight.copy_(torch.empty(c).uniform_(0.6, 1.4))
            norm.bias.copy_(0.1 * torch.randn(c))
    return net.eval()


def export_onnx(net, path, height: int = 112, width: int = 112, dynamic_batch: bool = True) -> str:
    """`net` written to `path` by torch's TorchScript exporter (BatchNorm folded into the convolutions, as a user's
    export does it), with a dynamic batch axis when `dynamic_batch`; returns the path."""
    import torch

    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(net, torch.rand(1, 3, height, width), str(path), dynamo=False, input_names=["images"],
                      output_names=["logits"], dynamic_axes=axes)
    return str(path)


def imagenet_card(outputs: dict, **fields) -> dict:
    """The model card of a torchvision model: NCHW RGB input of 112x112, ImageNet normalisation, sigmoid outputs;
    `outputs` {AU id: output index}; `fields` replace any field."""
    return {"input_size": [112, 112], "layout": "NCHW", "channel_order": "RGB", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "outputs": {str(au): index for au, index in outputs.items()},
            "output_activation": "sigmoid", **fields}


def torch_logits(net, images, dtype=None) -> np.ndarray:
    """`net`'s outputs for aujax images (n, h, w, 3) RGB in [0, 1], normalised as `imagenet_card` says (float64 with
    `dtype=torch.float64`)."""
    import torch

    dtype = dtype or torch.float32
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(images), (0, 3, 1, 2)))).to(dtype)
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1)
    with torch.no_grad():
        return net.to(dtype)((x - mean) / std).numpy()
