"""torchvision VGG-11/16 with BatchNorm (cfg A and D), without Dropout."""

from __future__ import annotations

import numpy as np
import onnx

from ._builder import Builder

_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def adaptive_pool_matrix(n: int, out: int) -> np.ndarray:
    """[out, n] matrix of PyTorch's adaptive average pooling along one axis."""
    a = np.zeros((out, n), dtype=np.float64)
    for i in range(out):
        lo, hi = (i * n) // out, -((-(i + 1) * n) // out)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


def adaptive_avgpool7(b: Builder, x: str, s: int) -> str:
    """AdaptiveAvgPool2d(7) on an s x s map: nothing if s == 7, AveragePool if 7 divides s,
    else the exact pooling matrices applied by two MatMuls."""
    if s == 7:
        return x
    if s % 7 == 0:
        k = s // 7
        return b.node("AveragePool", "avgpool", [x], kernel_shape=[k, k], strides=[k, k])
    a = adaptive_pool_matrix(s, 7)
    x = b.node("MatMul", "avgpool.w", [x, b.param("avgpool.pool_w", a.T)])  # [B,C,s,7]
    return b.node("MatMul", "avgpool.h", [b.param("avgpool.pool_h", a), x])  # [B,C,7,7]


def vgg_bn(depth: int, *, bn: str = "keep", seed: int = 0, batch: int = 1, image_size: int = 224,
           num_classes: int = 1000) -> onnx.ModelProto:
    """VGG-`depth` (11 or 16) with BN; convs keep their bias as in torchvision."""
    b = Builder(seed=seed, bn=bn)
    x, c, s, idx = "input", 3, image_size, 0
    for v in _CFGS[depth]:
        if v == "M":
            x = b.node("MaxPool", f"features.{idx}", [x], kernel_shape=[2, 2], strides=[2, 2])
            s, idx = s // 2, idx + 1
        else:
            x = b.conv_bn(x, c, v, 3, conv=f"features.{idx}", bn=f"features.{idx + 1}", conv_bias=True)
            x = b.relu(x, f"features.{idx + 2}")
            c, idx = v, idx + 3
    if s < 1:
        raise ValueError(f"image_size {image_size} too small for VGG (needs >= 32)")
    x = adaptive_avgpool7(b, x, s)
    x = b.node("Flatten", "flatten", [x], axis=1)
    x = b.relu(b.gemm(x, c * 49, 4096, name="classifier.0"), "classifier.1")
    x = b.relu(b.gemm(x, 4096, 4096, name="classifier.3"), "classifier.4")
    x = b.gemm(x, 4096, num_classes, name="classifier.6", gain=1.0)
    return b.model(x, [batch, 3, image_size, image_size], [batch, num_classes], f"vgg{depth}_bn")
