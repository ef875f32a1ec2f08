"""Collapsible activations: f_a(x) = (1 - a) g(x) + a x, one learnable slope a per layer.

``g`` is the activation being replaced (ReLU, ReLU6 or GELU). a = 0 is exactly ``g``, a = 1 is
exactly the identity, so training a toward 1 (LayerCollapse, arXiv 2311.17943) makes the two
linear layers around the activation one layer.

* ReLU:  (1 - a) relu(x) + a x = max(x, 0) + a min(x, 0): PReLU with slope a (computed and
  exported as PReLU).
* ReLU6: slope a below 0 and above 6, slope 1 in between; both kinks vanish at a = 1.
* GELU:  the blend (1 - a) x Phi(x) + a x.

An ``nn.PReLU`` already has its slopes; :func:`onnx_depth.torch.prepare` uses them in place.

Export (:func:`onnx_depth.torch.export`) swaps every collapsible activation for
:meth:`CollapsibleActivation.export_module`: a = 0 exports the original op (Relu, Clip, Gelu
pattern), a = 1 exactly exports ``PRelu`` with slope 1 (or nothing), which
``onnx-depth optimize --lossless`` removes before merging the linear layers around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pruning import PrunableLayer

__all__ = ["KINDS", "CollapsibleActivation", "PReLUOne", "kind_of", "is_supported", "slope_parameters"]

KINDS = ("relu", "relu6", "gelu")


def kind_of(module: nn.Module) -> str | None:
    """'relu', 'relu6', 'gelu' or 'prelu' for a supported activation module, else None."""
    if isinstance(module, CollapsibleActivation):
        return module.kind
    if isinstance(module, nn.PReLU):
        return "prelu"
    if isinstance(module, nn.ReLU6):
        return "relu6"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Hardtanh) and module.min_val == 0.0 and module.max_val == 6.0:
        return "relu6"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else None
    return None


def is_supported(module: nn.Module) -> bool:
    return kind_of(module) is not None


class CollapsibleActivation(nn.Module):
    """(1 - a) g(x) + a x with a learnable scalar slope a (shape [1]), initialized to ``init``
    (0: the function is exactly the original activation)."""

    def __init__(self, kind: str, init: float = 0.0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.slope = nn.Parameter(torch.full((1,), float(init)))

    @classmethod
    def replacing(cls, module: nn.Module, init: float = 0.0) -> "CollapsibleActivation":
        kind = kind_of(module)
        if kind not in KINDS:
            raise TypeError(f"cannot make {type(module).__name__} collapsible (supported: nn.ReLU, nn.ReLU6, "
                            f"nn.Hardtanh(0, 6), nn.GELU(approximate='none'); nn.PReLU is used in place)")
        return cls(kind, init)

    def base(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return F.relu(x)
        if self.kind == "relu6":
            return F.relu6(x)
        return F.gelu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return F.prelu(x, self.slope)
        a = self.slope
        return self.base(x) * (1 - a) + x * a

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, slope={float(self.slope.detach()[0]):.4f}"

    def export_module(self, collapsed: str = "prelu") -> nn.Module:
        """The module to export in this activation's place (a frozen copy of its function).

        a == 1 exactly: ``PReLUOne`` (an ONNX PRelu with slope 1; ``collapsed="identity"``
        exports nothing). a == 0 exactly: the original activation. Otherwise the blend."""
        a = float(self.slope.detach()[0])
        if a == 1.0:
            return nn.Identity() if collapsed == "identity" else PReLUOne()
        if a == 0.0:
            return {"relu": nn.ReLU, "relu6": nn.ReLU6, "gelu": nn.GELU}[self.kind]()
        frozen = CollapsibleActivation(self.kind, a)
        frozen.slope.requires_grad_(False)
        return frozen


class PReLUOne(nn.Module):
    """The identity written as PReLU with slope exactly 1 (ONNX ``PRelu``), so that the exported
    graph still marks where the activation was; onnx-depth's exact_activations pass removes it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("slope", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.slope)


def slope_parameters(module: nn.Module) -> nn.Parameter | None:
    """The slope tensor of a collapsible activation, a prunable layer or an nn.PReLU, else None."""
    if isinstance(module, (CollapsibleActivation, PrunableLayer)):
        return module.slope
    if isinstance(module, nn.PReLU):
        return module.weight
    return None
