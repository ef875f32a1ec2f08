"""torchvision MobileNetV2 (any width multiplier), ReLU6 exported as Clip(x, 0, 6)."""

from __future__ import annotations

import onnx

from ._builder import Builder

# t (expansion), c (channels), n (repeats), s (first stride), as in torchvision.
_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible` channel rounding."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(b: Builder, x: str, p: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> str:
    """torchvision Conv2dNormActivation: `{p}.0` conv, `{p}.1` BN, `{p}.2` ReLU6."""
    x = b.conv_bn(x, cin, cout, k, stride=stride, groups=groups, conv=f"{p}.0", bn=f"{p}.1")
    return b.relu6(x, f"{p}.2")


def _inverted_residual(b: Builder, x: str, p: str, cin: int, cout: int, stride: int, t: int) -> str:
    hidden = int(round(cin * t))
    h, i = x, 0
    if t != 1:
        h = _conv_bn_relu6(b, h, f"{p}.conv.{i}", cin, hidden, 1)
        i += 1
    h = _conv_bn_relu6(b, h, f"{p}.conv.{i}", hidden, hidden, 3, stride=stride, groups=hidden)
    # Linear bottleneck: gain 1 (not 2) so that 17 un-activated projections do not double the scale each.
    h = b.conv_bn(h, hidden, cout, 1, conv=f"{p}.conv.{i + 1}", bn=f"{p}.conv.{i + 2}", gain=1.0)
    if stride == 1 and cin == cout:
        h = b.node("Add", f"{p}.add", [x, h])
    return h


def mobilenet_v2(width_mult: float = 1.0, *, bn: str = "keep", seed: int = 0, batch: int = 1,
                 image_size: int = 224, num_classes: int = 1000) -> onnx.ModelProto:
    """MobileNetV2 with width multiplier `width_mult` and random weights."""
    b = Builder(seed=seed, bn=bn)
    c = make_divisible(32 * width_mult)
    last = make_divisible(1280 * max(1.0, width_mult))
    x = _conv_bn_relu6(b, "input", "features.0", 3, c, 3, stride=2)
    idx = 1
    for t, ch, n, s in _SETTING:
        cout = make_divisible(ch * width_mult)
        for i in range(n):
            x = _inverted_residual(b, x, f"features.{idx}", c, cout, s if i == 0 else 1, t)
            c, idx = cout, idx + 1
    x = _conv_bn_relu6(b, x, f"features.{idx}", c, last, 1)
    x = b.classifier_head(x, last, num_classes, fc="classifier.1")
    return b.model(x, [batch, 3, image_size, image_size], [batch, num_classes], f"mobilenetv2_{width_mult}")
