"""The PyTorch side of aujax's comparisons with torch and Zennit: helpers for torchvision ResNets, imported by the
benchmark (`experiments/benchmark.py`, parts lrp_jax and lrp_zennit) and by the Zennit agreement test
(`tests/test_lrp_zennit.py`). Not a script; torch is imported where a helper is called."""

import os

import numpy as np

IMAGE_SIZE = 112


def fold_batch_norm_torch(net):
    """torchvision ResNet (BasicBlock or Bottleneck) with every BatchNorm fused into its convolution by torch (eval
    mode), BN -> Identity."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.conv1, net.bn1 = fuse_conv_bn_eval(net.conv1, net.bn1), torch.nn.Identity()
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
                if hasattr(block, conv):  # conv3: Bottleneck only
                    setattr(block, conv, fuse_conv_bn_eval(getattr(block, conv), getattr(block, bn)))
                    setattr(block, bn, torch.nn.Identity())
            if block.downsample is not None:
                block.downsample = torch.nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
    return net


def random_resnet(name: str, num_outputs: int, seed: int = 0):
    """torchvision's `name` (e.g. 'resnet50') with `num_outputs` outputs in eval mode: random weights (torch seed
    `seed`), BatchNorm statistics those of one batch of 4 noise images (so that activations keep their scale through
    the 50 layers). The same `name` and `seed` give the same network in any process (on the CPU)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(num_classes=num_outputs)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0  # the running statistics become the calibration batch's
    with torch.no_grad():
        net.train()(torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE))
    return net.eval()


def onnx_network(net, au_ids, directory: str):
    """`net` (pixels (n, 3, 112, 112) in [0, 1], no normalisation -> logits of `au_ids` in order) exported to ONNX in
    `directory` by torch's TorchScript exporter (BatchNorm folded into the convolutions) and read back by
    `aujax.lrp.load_onnx`: an `ExplainableNetwork` of aujax images (n, 112, 112, 3) float32 in [0, 1]."""
    import torch

    from aujax.lrp import load_onnx

    path = os.path.join(directory, "net.onnx")
    torch.onnx.export(net, torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE), path, dynamo=False, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    card = {"input_size": [IMAGE_SIZE, IMAGE_SIZE], "layout": "NCHW", "channel_order": "RGB", "mean": [0.0] * 3,
            "std": [1.0] * 3, "outputs": {str(au): index for index, au in enumerate(au_ids)},
            "output_activation": "none"}
    return load_onnx(path, card)


def pixel_logits(net, images: np.ndarray) -> np.ndarray:
    """(n, outputs) float32 logits of `net` for aujax images (n, h, w, 3) float32 in [0, 1]."""
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))))).numpy()
