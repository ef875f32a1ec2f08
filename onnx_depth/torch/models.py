"""Small torch models used by the training companion's examples, tests and benchmarks.

* :class:`MnistMobileNet`: a MobileNetV2-style CNN for 1x28x28 MNIST digits (50k parameters).
* :class:`FFNStack`: the zoo's ``ffn_stack`` (pre-LayerNorm FFN blocks with a residual) as a torch
  module, with PReLU or GELU between the two linear layers of each block.

Every activation is an ``nn.Module`` (never a functional call), so that the legacy ONNX exporter
gives each one a scope-based node name that :mod:`onnx_depth.torch.mapping` can resolve.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from onnx import numpy_helper
from torch import nn

__all__ = ["InvertedResidual", "MnistMobileNet", "FFNBlock", "FFNStack", "MNIST_BLOCKS"]

# (expansion t, output channels c, stride s) per inverted residual block.
MNIST_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (6, 16, 1),
    (6, 16, 1),
    (6, 24, 2),
    (6, 24, 1),
    (6, 32, 2),
    (6, 32, 1),
)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand + BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 project + BN; residual when
    stride 1 and c_in == c_out. ``conv`` is one flat Sequential, as in torchvision:
    conv.0/1/2 = expand conv/BN/ReLU6, conv.3/4/5 = depthwise, conv.6/7 = project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *_conv_bn(cin, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class MnistMobileNet(nn.Module):
    """MobileNetV2-style CNN for [N, 1, 28, 28] inputs: stem conv3x3(1->16, stride 2)+BN+ReLU6,
    six inverted residual blocks (:data:`MNIST_BLOCKS`: expansion 6, at 14x14, 7x7 and 4x4; two of
    stride 2, four with a residual), 1x1 conv to 64 + BN + ReLU6, global average pooling,
    Linear(64, 10); 50.5k parameters. Module paths: ``features.0`` stem, ``features.1..6`` blocks,
    ``features.7`` head conv, ``classifier``."""

    def __init__(self, blocks: Sequence[tuple[int, int, int]] = MNIST_BLOCKS, stem: int = 16, head: int = 64,
                 num_classes: int = 10, stem_stride: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(1, stem, 3, stem_stride)]
        c = stem
        for t, cout, s in blocks:
            layers.append(InvertedResidual(c, cout, s, t))
            c = cout
        layers.append(_conv_bn(c, head, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def residual_blocks(self) -> list[str]:
        """Module paths of the blocks with a residual connection (stride 1, c_in == c_out)."""
        return [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, InvertedResidual) and m.use_res]


class FFNBlock(nn.Module):
    """x + fc2(act(fc1(LayerNorm(x)))): one block of the zoo's ``ffn_stack``."""

    def __init__(self, d_model: int, d_ff: int, act: str = "prelu", prelu_slope: float = 0.25) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model, eps=1e-5)
        self.fc1 = nn.Linear(d_model, d_ff)
        if act == "prelu":
            # one slope per layer: nn.PReLU's per-channel slopes index dim 1, not the feature dim
            self.act: nn.Module = nn.PReLU(1, init=prelu_slope)
        elif act == "gelu":
            self.act = nn.GELU()
        else:
            raise ValueError(f"act must be 'prelu' or 'gelu', got {act!r}")
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.ln(x))))


class FFNStack(nn.Module):
    """``blocks`` x :class:`FFNBlock` on [batch, seq, d_model], like ``onnx_depth.zoo.ffn_stack``."""

    def __init__(self, d_model: int = 64, d_ff: int = 256, blocks: int = 2, act: str = "prelu",
                 prelu_slope: float = 0.25) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        self.blocks = nn.Sequential(*[FFNBlock(d_model, d_ff, act, prelu_slope) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    @classmethod
    def from_zoo(cls, model) -> "FFNStack":
        """The torch twin of ``onnx_depth.zoo.build("ffn_stack", act="prelu" | "gelu", ...)`` with
        its weights (MatMul weights [in, out] transposed into nn.Linear). The zoo's PReLU has one
        slope per feature; they must all be equal (as built: ``prelu_slope``), since this
        module's PReLU has one slope per layer."""
        w = {t.name: np.array(numpy_helper.to_array(t)) for t in model.graph.initializer}
        blocks = sum(1 for k in w if k.endswith(".ln.weight"))
        d_model, d_ff = w["blocks.0.fc1.weight"].shape
        act = "prelu" if "blocks.0.act.slope" in w else "gelu"
        slope = float(w["blocks.0.act.slope"].flat[0]) if act == "prelu" else 0.25
        net = cls(d_model, d_ff, blocks, act, slope)
        with torch.no_grad():
            for i, blk in enumerate(net.blocks):
                p = f"blocks.{i}"
                blk.ln.weight.copy_(torch.from_numpy(w[f"{p}.ln.weight"]))
                blk.ln.bias.copy_(torch.from_numpy(w[f"{p}.ln.bias"]))
                for fc in ("fc1", "fc2"):
                    getattr(blk, fc).weight.copy_(torch.from_numpy(np.ascontiguousarray(w[f"{p}.{fc}.weight"].T)))
                    getattr(blk, fc).bias.copy_(torch.from_numpy(w[f"{p}.{fc}.bias"]))
                if act == "prelu":
                    s = w[f"{p}.act.slope"]
                    if not np.all(s == s.flat[0]):
                        raise ValueError(f"{p}.act.slope is not one value per layer")
                    blk.act.weight.fill_(float(s.flat[0]))
        return net
