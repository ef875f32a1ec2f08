"""Model zoo: torchvision-topology CNNs and a transformer FFN stack, built in pure onnx.

`build(name, bn="keep"|"fold", seed=..., batch=..., image_size=..., **kw)` returns an
onnx.ModelProto (opset 17, IR 8) with random but well-scaled float32 weights, input `input` and
output `output`. `bn="fold"` is the same network with every BatchNorm folded into its conv.
"""

from __future__ import annotations

import functools
from typing import Callable

import onnx

from ._builder import BN_MODES
from .ffn import ffn_stack
from .mobilenet import make_divisible, mobilenet_v2
from .resnet import resnet
from .vgg import vgg_bn

_BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet18": functools.partial(resnet, 18),
    "resnet34": functools.partial(resnet, 34),
    "resnet50": functools.partial(resnet, 50),
    "mobilenetv2_1.0": functools.partial(mobilenet_v2, 1.0),
    "mobilenetv2_1.4": functools.partial(mobilenet_v2, 1.4),
    "vgg11_bn": functools.partial(vgg_bn, 11),
    "vgg16_bn": functools.partial(vgg_bn, 16),
    "ffn_stack": ffn_stack,
}

NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build(name: str, *, bn: str = "keep", seed: int = 0, batch: int = 1, image_size: int = 224, **kw) -> onnx.ModelProto:
    """Build zoo model `name` (one of NAMES). CNNs accept `num_classes`; ffn_stack takes its own
    keywords (seq, d_model, d_ff, blocks, act, prelu_slope) and ignores `image_size` and `bn`."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(NAMES)}")
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if name == "ffn_stack":
        return ffn_stack(bn=bn, seed=seed, batch=batch, **kw)
    return _BUILDERS[name](bn=bn, seed=seed, batch=batch, image_size=image_size, **kw)


__all__ = ["NAMES", "build", "ffn_stack", "make_divisible", "mobilenet_v2", "resnet", "vgg_bn"]
