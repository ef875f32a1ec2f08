"""Emit the IR as an ONNX model and write it safely.

The emitted model keeps the input's ir_version and opsets (onnx 1.23 would write IR 14, which
onnxruntime 1.31 refuses), lists nodes in topological order, drops unused initializers and stale
value_info, and passes onnx.checker. Files are written atomically (temporary file in the target
directory, then rename); models over 2 GB go to external data next to the output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from ..errors import InputError
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
    """Write `model` to `path` atomically. Refuses to overwrite `protect` (the input file).

    Models of `external_threshold` bytes or more (default: protobuf's 2 GB limit) are written
    with external data (`<name>.data` beside the file).
    """
    out = Path(path)
    if protect is not None and out.exists() and Path(protect).exists() and out.resolve() == Path(protect).resolve():
        raise InputError(f"{out}: refusing to overwrite the input model; choose another output path")
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"{directory}: output directory does not exist")
    large = model.ByteSize() >= external_threshold
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        if large:
            data_name = out.name + ".data"
            tmp_data = directory / f".{data_name}.tmp"
            m = onnx.ModelProto()
            m.CopyFrom(model)  # onnx.save_model would turn the caller's tensors into references
            onnx.save_model(m, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=tmp_data.name, size_threshold=0)
            # the model refers to the data file by name: point it at the final name
            for t in m.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            onnx.save_model(m, tmp)
            os.replace(tmp_data, directory / data_name)
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out
