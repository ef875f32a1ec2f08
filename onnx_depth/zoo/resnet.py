"""torchvision ResNet-18/34/50 (ResNet-50 is v1.5: the stride sits on the 3x3 conv)."""

from __future__ import annotations

import onnx

from ._builder import Builder

# He gain of the last conv of each residual branch. With the full gain 2, the un-normalized sum
# x + f(x) grows block after block (ResNet-50 logits std ~4e3); trained ResNets have small last-BN
# gammas instead. 0.25 keeps the logits std around 5-15 at any depth here.
RESIDUAL_GAIN = 0.25

_LAYERS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3])}


def _basic(b: Builder, x: str, p: str, cin: int, planes: int, stride: int) -> tuple[str, int]:
    h = b.conv_bn(x, cin, planes, 3, stride=stride, conv=f"{p}.conv1", bn=f"{p}.bn1")
    h = b.relu(h, f"{p}.relu1")
    h = b.conv_bn(h, planes, planes, 3, conv=f"{p}.conv2", bn=f"{p}.bn2", gain=RESIDUAL_GAIN)
    return _add_residual(b, h, x, p, cin, planes, stride, relu=f"{p}.relu2"), planes


def _bottleneck(b: Builder, x: str, p: str, cin: int, planes: int, stride: int) -> tuple[str, int]:
    cout = planes * 4
    h = b.conv_bn(x, cin, planes, 1, conv=f"{p}.conv1", bn=f"{p}.bn1")
    h = b.relu(h, f"{p}.relu1")
    h = b.conv_bn(h, planes, planes, 3, stride=stride, conv=f"{p}.conv2", bn=f"{p}.bn2")
    h = b.relu(h, f"{p}.relu2")
    h = b.conv_bn(h, planes, cout, 1, conv=f"{p}.conv3", bn=f"{p}.bn3", gain=RESIDUAL_GAIN)
    return _add_residual(b, h, x, p, cin, cout, stride, relu=f"{p}.relu3"), cout


def _add_residual(b: Builder, h: str, x: str, p: str, cin: int, cout: int, stride: int, relu: str) -> str:
    """relu(h + x), x downsampled when the block changes the resolution or the width."""
    idn = _downsample(b, x, p, cin, cout, stride)
    return b.relu(b.node("Add", f"{p}.add", [h, idn]), relu)


def _downsample(b: Builder, x: str, p: str, cin: int, cout: int, stride: int) -> str:
    if stride == 1 and cin == cout:
        return x
    return b.conv_bn(x, cin, cout, 1, stride=stride, conv=f"{p}.downsample.0", bn=f"{p}.downsample.1")


def resnet(depth: int, *, bn: str = "keep", seed: int = 0, batch: int = 1, image_size: int = 224,
           num_classes: int = 1000) -> onnx.ModelProto:
    """ResNet-`depth` (18, 34 or 50) with random weights."""
    kind, counts = _LAYERS[depth]
    block = _basic if kind == "basic" else _bottleneck
    b = Builder(seed=seed, bn=bn)
    x = b.conv_bn("input", 3, 64, 7, stride=2, pad=3, conv="conv1", bn="bn1")
    x = b.relu(x, "relu")
    x = b.node("MaxPool", "maxpool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            x, c = block(b, x, f"layer{i + 1}.{j}", c, planes, stride)
    x = b.classifier_head(x, c, num_classes, fc="fc")
    return b.model(x, [batch, 3, image_size, image_size], [batch, num_classes], f"resnet{depth}")
