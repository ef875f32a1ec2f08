"""Emit the IR as an ONNX model and write it safely.

The emitted model keeps the input's ir_version and opsets (onnx 1.23 would write IR 14, which
onnxruntime 1.31 refuses), lists nodes in topological order, drops unused initializers and stale
value_info, and passes onnx.checker. Files are written through onnx_depth.safe_io (atomic, regular
files only, the user's umask); models over 2 GB go to external data next to the output.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import numpy_helper

from .. import safe_io
from .graph import Graph

_PROTO_LIMIT = 2**31 - 1


def to_proto(graph: Graph, *, check: bool = True) -> onnx.ModelProto:
    graph.remove_unused_initializers()
    graph.prune_value_info()
    meta = graph.meta
    g = onnx.GraphProto()
    g.name = meta.graph_name or "onnx_depth"
    if meta.graph_doc_string:
        g.doc_string = meta.graph_doc_string
    g.node.extend(n.to_proto() for n in graph.topological_order())
    g.initializer.extend(t.to_proto() for t in graph.initializers.values())
    g.sparse_initializer.extend(meta.sparse_initializers)
    inputs = list(graph.inputs)
    if meta.ir_version < 4:
        # IR < 4: every initializer must also be a graph input.
        have = {i.name for i in inputs}
        for name, t in graph.initializers.items():
            if name not in have:
                inputs.append(onnx.helper.make_tensor_value_info(name, t.elem_type, list(t.shape)))
    g.input.extend(inputs)
    g.output.extend(graph.outputs)
    g.value_info.extend(graph.value_info.values())
    for k, v in meta.graph_metadata_props:
        e = g.metadata_props.add()
        e.key, e.value = k, v

    m = onnx.ModelProto()
    m.ir_version = meta.ir_version
    for domain, version in meta.opset_import.items():
        op = m.opset_import.add()
        op.domain, op.version = domain, version
    for attr in ("producer_name", "producer_version", "domain", "doc_string"):
        if getattr(meta, attr):
            setattr(m, attr, getattr(meta, attr))
    if meta.model_version:
        m.model_version = meta.model_version
    for k, v in meta.metadata_props:
        e = m.metadata_props.add()
        e.key, e.value = k, v
    m.functions.extend(meta.functions)
    m.training_info.extend(meta.training_info)
    m.graph.CopyFrom(g)
    if check and m.ByteSize() < _PROTO_LIMIT:
        onnx.checker.check_model(m, full_check=True)
    return m


def save(
    model: onnx.ModelProto,
    path: "str | os.PathLike[str]",
    *,
    protect: "str | os.PathLike[str] | None" = None,
    external_threshold: int = _PROTO_LIMIT,
) -> Path:
    """Write `model` to `path` atomically (onnx_depth.safe_io: regular files only, no symlinks,
    the user's umask). Refuses to overwrite `protect` (the input file) or its external data.

    Models of `external_threshold` bytes or more (default: protobuf's 2 GB limit) are written
    with external data (`<name>.data` beside the file, every initializer).
    """
    out = safe_io.check_destination(path, "output model")
    large = model.ByteSize() >= external_threshold
    data_path = out.with_name(out.name + ".data") if large else None
    outputs = {"the output model": out, "its external data": data_path}
    safe_io.check_distinct(outputs, protected_inputs(protect))
    with safe_io.AtomicGroup() as group:
        if large:
            m = onnx.ModelProto()
            m.CopyFrom(model)  # the caller's tensors stay inline
            with group.open(data_path, "wb", "external data") as f:
                _externalize(m, f, data_path.name)
            blob = m.SerializeToString()
        else:
            blob = model.SerializeToString()
        with group.open(out, "wb", "output model") as f:
            f.write(blob)
    return out


def protected_inputs(protect: "str | os.PathLike[str] | None") -> dict[str, "str | os.PathLike[str]"]:
    """The input model and the external data files it refers to."""
    if protect is None:
        return {}
    found: dict[str, str | os.PathLike[str]] = {"the input model": protect}
    try:
        if os.path.getsize(protect) > 64 << 20:  # weights inline: no external data to protect
            return found
        ref = onnx.load(os.fspath(protect), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable: nothing more to protect
        return found
    base = os.path.dirname(os.fspath(protect))
    for t in ref.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                found[f"the input's external data {e.value}"] = os.path.join(base, e.value)
    return found


def _externalize(m: onnx.ModelProto, f, location: str, threshold: int = 0) -> None:
    """Move every initializer of `threshold` bytes or more into the open file `f` (4 KiB aligned
    offsets, the layout onnx.save_model writes)."""
    offset = 0
    for t in m.graph.initializer:
        if not t.HasField("raw_data"):
            if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
                continue
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
        raw = t.raw_data
        if len(raw) < threshold:
            continue
        pad = (-offset) % 4096
        f.write(b"\0" * pad)
        offset += pad
        f.write(raw)
        t.ClearField("raw_data")
        del t.external_data[:]
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
        t.data_location = onnx.TensorProto.EXTERNAL
        offset += len(raw)
