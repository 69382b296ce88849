"""The PyTorch side of aujax's comparisons with torch and Zennit: helpers for torchvision ResNets, imported by the
benchmark (`experiments/benchmark.py`, part lrp_zennit) and by the Zennit agreement test
(`tests/test_lrp_zennit.py`). Not a script; torch is imported where a helper is called."""


def fold_batch_norm_torch(net):
    """torchvision ResNet with every BatchNorm fused into its convolution by torch (eval mode), BN -> Identity."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.conv1, net.bn1 = fuse_conv_bn_eval(net.conv1, net.bn1), torch.nn.Identity()
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                setattr(block, conv, fuse_conv_bn_eval(getattr(block, conv), getattr(block, bn)))
                setattr(block, bn, torch.nn.Identity())
            if block.downsample is not None:
                block.downsample = torch.nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
    return net
