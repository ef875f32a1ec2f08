"""onnx-depth: make ONNX models shallower and faster.

    import onnx_depth
    res = onnx_depth.optimize("model.onnx", latency_budget=0.7, calibration="calib.npz")
    res.model, res.report, res.plan

The functions are imported lazily (PEP 562): every `import onnx_depth.X` runs this file first,
and the API pulls onnxruntime, planning and analysis, which users of e.g. onnx_depth.kernels,
onnx_depth.torch or a Dask worker running onnx_depth.cluster jobs do not need. Lower layers read
the version from onnx_depth.version, never from here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .api import OptimizeResult, analyze, analyze_activations, optimize

__all__ = ["OptimizeResult", "__version__", "analyze", "analyze_activations", "optimize"]


def __getattr__(name: str) -> Any:
    if name in ("optimize", "analyze", "analyze_activations", "OptimizeResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnx_depth' has no attribute {name!r}")
