"""ONNX node names of the legacy exporter -> module paths of the torch model.

``torch.onnx.export(..., dynamo=False)`` names each node after the chain of module calls that
produced it: ``/features/features.3/conv/conv.2/Clip`` is the Clip op emitted inside module
``features.3.conv.2``. Each scope component is torch's *unqualified* name of the module: the
last non-numeric atom of its qualified path plus any numeric atoms after it (``features.3``,
``conv.2``, ``blocks.0.1``). The last component is the op type (``Clip``, ``Relu_1``, ...).

:func:`resolve` walks the scope components down the module tree: each component must name a
module below the previous one (usually a direct child; a deeper descendant is accepted when the
parent called it directly). :func:`activation_nodes` does the converse by exporting the model,
and is the ground truth the tests check :func:`resolve` against.
"""

from __future__ import annotations

import io
import warnings
from typing import Iterable

import onnx
import torch
from torch import nn

from .activations import kind_of

__all__ = ["MappingError", "unqualified", "scope_components", "resolve", "resolve_activations", "activation_nodes"]


class MappingError(ValueError):
    """An ONNX node name does not lead to a supported activation module."""


def unqualified(qualified: str) -> str:
    """torch's unqualified scope name: ``features.3.conv.2`` -> ``conv.2``; ``blocks.0.1`` -> itself."""
    atoms = qualified.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified


def scope_components(node_name: str) -> list[str]:
    """The module scope components of a legacy-exporter node name (the op type dropped)."""
    if not node_name.startswith("/"):
        raise MappingError(f"{node_name!r} is not a scope-based node name of torch's legacy ONNX exporter "
                           "(expected '/module/.../OpType'); export with torch.onnx.export(dynamo=False)")
    parts = [p for p in node_name.split("/") if p]
    return parts[:-1]


def resolve(model: nn.Module, node_name: str) -> str:
    """The qualified path of the module whose scope emitted ``node_name`` ('' for the root)."""
    modules = dict(model.named_modules())
    current = ""
    for comp in scope_components(node_name):
        prefix = f"{current}." if current else ""
        matches = [
            name for name in modules
            if name.startswith(prefix) and name != current and unqualified(name) == comp
        ]
        if not matches:
            where = f"module {current!r}" if current else "the model"
            raise MappingError(f"{node_name!r}: no module named {comp!r} below {where} "
                               "(was the ONNX file exported from this model?)")
        # the closest descendant (fewest levels below `current`) wins
        depth = lambda n: n[len(prefix):].count(".")  # noqa: E731
        best = min(depth(n) for n in matches)
        closest = [n for n in matches if depth(n) == best]
        if len(closest) > 1:
            raise MappingError(f"{node_name!r}: scope {comp!r} is ambiguous below {current or 'the root'!r}: {closest}")
        current = closest[0]
    return current


def resolve_activations(model: nn.Module, node_names: Iterable[str]) -> dict[str, str]:
    """{ONNX node name: module path} for activation nodes; the modules must be supported
    activation modules (nn.ReLU, nn.ReLU6, nn.Hardtanh(0, 6), nn.GELU, nn.PReLU or already
    collapsible). A functional activation (F.relu inside some forward) is refused with a clear
    error: it has no module of its own to replace."""
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for name in node_names:
        path = resolve(model, name)
        module = modules[path]
        if kind_of(module) is None:
            op = name.rstrip("/").rsplit("/", 1)[-1]
            raise MappingError(
                f"{name!r} resolves to module {path or '<root>'!r} ({type(module).__name__}), which is not an "
                f"activation module: the {op} op is a functional call inside its forward(). Functional "
                "activations are not supported; use nn.ReLU/nn.ReLU6/nn.GELU/nn.PReLU modules instead"
            )
        out[name] = path
    return out


def activation_nodes(model: nn.Module, example_input, *, opset: int = 13) -> dict[str, str]:
    """Export ``model`` (legacy exporter, in memory) and map the name of every node emitted
    inside a supported activation module to that module's path. Nodes of functional
    activations are not included (they belong to no activation module)."""
    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), buf, dynamo=False, opset_version=opset,
                              training=torch.onnx.TrainingMode.PRESERVE)
    finally:
        model.train(was_training)
    graph = onnx.load_from_string(buf.getvalue()).graph
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for node in graph.node:
        if not node.name.startswith("/") or node.op_type in ("Constant", "Identity"):
            continue
        try:
            path = resolve(model, node.name)
        except MappingError:
            continue
        if path and kind_of(modules[path]) is not None:
            out[node.name] = path
    return out
