"""What the shapes say: shape inference (onnx, falling back to onnxruntime's symbolic shape
inference), tensor sizes and the memory limit, and the channel checks onnx shape inference lets
through but onnxruntime refuses."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx

from ..errors import InputError

log = logging.getLogger("onnx_depth")

PROTO_LIMIT = 2**31 - 1  # a serialized ModelProto must stay under 2 GB


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with data propagation; onnxruntime's symbolic inference as fallback."""
    if model.ByteSize() < PROTO_LIMIT:
        try:
            return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as e:  # noqa: BLE001 - fall back below
            log.info("onnx shape inference failed (%s); trying onnxruntime's", first_line(e))
        try:  # onnxruntime.tools imports torch when it is installed: only on this fallback path
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
            if out is not None:
                return out
        except Exception as e:  # noqa: BLE001
            log.warning("shape inference failed: %s", first_line(e))
    return model


def max_tensor_bytes() -> int:
    """Largest tensor (bytes) a model may need at batch 1 before we refuse to evaluate it
    (folding, --check, calibration); $ONNX_DEPTH_MAX_TENSOR_BYTES, default 2 GiB."""
    try:
        return int(os.environ.get("ONNX_DEPTH_MAX_TENSOR_BYTES", 1 << 31))
    except ValueError:
        raise InputError("ONNX_DEPTH_MAX_TENSOR_BYTES must be an integer number of bytes") from None


def tensor_bytes(vi: onnx.ValueInfoProto) -> int | None:
    """Bytes of a tensor from its inferred type (symbolic dims count as 1), None if unknown."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    t = vi.type.tensor_type
    n = 1
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            n *= max(int(d.dim_value), 0)
        elif not d.HasField("dim_param"):
            return None
    try:
        item = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        item = 8
    return n * max(item, 1)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def check_tensor_sizes(model: onnx.ModelProto, where: str = "model") -> None:
    """Refuse (InputError, exit 2) a model whose inferred tensors need more than
    max_tensor_bytes() at batch 1: evaluating it (--check, calibration, profiling) would
    exhaust memory. Uses shapes already inferred into `model`; evaluates nothing."""
    limit = max_tensor_bytes()
    g = model.graph
    for v in list(g.value_info) + list(g.output) + list(g.input):
        b = tensor_bytes(v)
        if b is not None and b > limit:
            raise InputError(f"{where}: tensor {v.name!r} would need {human_bytes(b)} (over the "
                             f"{human_bytes(limit)} limit, $ONNX_DEPTH_MAX_TENSOR_BYTES); refusing to evaluate it")


def check_channels(model: onnx.ModelProto, where: object = "model") -> None:
    """What onnx shape inference lets through but onnxruntime refuses at run time: a Conv whose
    input channels are not weight channels x group, a PRelu slope that does not broadcast to
    its input (static shapes only). InputError (exit 2)."""
    g = model.graph
    shapes: dict[str, list[int | None]] = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    for n in g.node:
        if n.op_type == "Conv" and len(n.input) > 1:
            x, w = shapes.get(n.input[0]), shapes.get(n.input[1])
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            if x and w and len(x) >= 2 and len(w) >= 2 and x[1] and w[1] and x[1] != w[1] * group:
                raise InputError(f"{where}: Conv {n.name or n.output[0]!r}: input has {x[1]} channels, weight expects "
                                 f"{w[1]} x group {group} = {w[1] * group}")
        elif n.op_type == "PRelu" and len(n.input) > 1:
            x, sl = shapes.get(n.input[0]), shapes.get(n.input[1])
            if x and sl is not None and all(d for d in x) and all(d for d in sl):
                try:
                    ok = np.broadcast_shapes(tuple(x), tuple(sl)) == tuple(x)
                except ValueError:
                    ok = False
                if not ok:
                    raise InputError(f"{where}: PRelu {n.name or n.output[0]!r}: slope shape {tuple(sl)} does not "
                                     f"broadcast to the input shape {tuple(x)}")
