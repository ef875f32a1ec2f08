"""Read an ONNX model into the IR.

Steps: read and validate (clear errors for missing, non-ONNX, truncated and checker-failing
files; here) → promote ``Constant`` nodes to initializers → constant-fold foldable subgraphs with
onnx-graphsurgeon (`folding`) → infer shapes (onnx, falling back to onnxruntime's symbolic shape
inference) and check tensor sizes and channels (`shape_inference`) → build the :class:`Graph`
(here).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from ..errors import InputError
from .folding import alias_constant_identities, fold_constants, has_external_data, promote_constants
from .graph import Graph, ModelMeta
from .node import Node
from ..errors import first_line
from .shape_inference import PROTO_LIMIT, check_channels, check_tensor_sizes, infer_shapes
from .tensor import Initializer

log = logging.getLogger("onnx_depth")


def read_model(source: "onnx.ModelProto | str | os.PathLike[str]", *, check: bool = True) -> tuple[onnx.ModelProto, str | None]:
    """Read a model; returns (ModelProto with external data NOT yet loaded, base directory)."""
    if isinstance(source, onnx.ModelProto):
        model, base_dir = source, None
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not an ONNX file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror})") from e
        if not data:
            raise InputError(f"{path}: empty file, not an ONNX model")
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise InputError(f"{path}: not an ONNX model or truncated file ({first_line(e) or 'protobuf parse error'})") from e
        if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
            raise InputError(f"{path}: not an ONNX model (no graph, opset or IR version)")
        base_dir = str(path.parent)
    if check:
        where = source if not isinstance(source, onnx.ModelProto) else "model"
        if not model.graph.output:
            raise InputError(f"{where}: the graph has no outputs (nothing to compute)")
        if base_dir is not None:
            _check_external_data(model, base_dir, where)
        _check(model, source)
    return model, base_dir


def _check_external_data(model: onnx.ModelProto, base_dir: str, where: object) -> None:
    """Every external tensor's file exists, is a regular file and holds offset + length bytes
    (a truncated or short data file is a bad input, found before anything reads it)."""
    sizes: dict[str, int] = {}
    for t in model.graph.initializer:
        if not onnx.external_data_helper.uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        full = os.path.join(base_dir, loc)
        if loc not in sizes:
            try:
                st = os.stat(full)
            except OSError:
                raise InputError(f"{where}: external data file {loc!r} of tensor {t.name!r} is missing") from None
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{where}: external data {loc!r} of tensor {t.name!r} is not a regular file")
            sizes[loc] = st.st_size
        try:
            offset = int(info.get("offset") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise InputError(f"{where}: tensor {t.name!r} has a bad external data offset/length") from None
        need = int(np.prod(list(t.dims), dtype=np.int64))
        try:
            need *= np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            need = 0
        end = offset + (length if length is not None else need)
        if offset < 0 or end > sizes[loc] or (length is not None and need and length < need):
            raise InputError(f"{where}: external data file {loc!r} is truncated or too short for tensor "
                             f"{t.name!r} (needs bytes {offset}..{end}, file has {sizes[loc]})")


def _check(model: onnx.ModelProto, source: object) -> None:
    """onnx.checker with full (strict) shape inference: a model whose shapes do not infer
    (non-broadcasting operands, wrong-rank weights, lying value_info) is a bad input, not
    something to find out when the rewritten model is emitted."""
    where = source if not isinstance(source, onnx.ModelProto) else "model"
    try:
        if isinstance(source, (str, os.PathLike)) and has_external_data(model):
            onnx.checker.check_model(os.fspath(source), full_check=False)
        else:
            onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
        raise InputError(f"{where}: fails the ONNX checker: {first_line(e)}") from e
    if model.ByteSize() < PROTO_LIMIT:
        try:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
            raise InputError(f"{where}: fails ONNX shape inference: {first_line(e)}") from e


# ---------------------------------------------------------------------- IR
def from_proto(model: onnx.ModelProto, base_dir: str | None = None) -> Graph:
    """Build the IR from a ModelProto as it is (no folding, no inference)."""
    g = model.graph
    meta = ModelMeta(
        ir_version=model.ir_version,
        opset_import={o.domain: o.version for o in model.opset_import},
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
        metadata_props=[(m.key, m.value) for m in model.metadata_props],
        functions=list(model.functions),
        training_info=list(model.training_info),
        graph_name=g.name,
        graph_doc_string=g.doc_string,
        sparse_initializers=list(g.sparse_initializer),
        graph_metadata_props=[(m.key, m.value) for m in getattr(g, "metadata_props", [])],
    )
    graph = Graph(meta)
    init_names = {t.name for t in g.initializer}
    # IR < 4 lists every initializer as a graph input too; they are weights, not inputs:
    # keep them as initializers only (emit lists them as inputs again).
    graph.inputs = [i for i in g.input if model.ir_version >= 4 or i.name not in init_names]
    graph.outputs = list(g.output)
    for t in g.initializer:
        graph.initializers[t.name] = Initializer(t.name, proto=t, base_dir=base_dir)
    io = {v.name for v in g.input} | {v.name for v in g.output}
    graph.value_info = {v.name: v for v in g.value_info if v.name not in io}
    for p in g.node:
        graph.add_node(Node.from_proto(p))
    return graph


def load(
    source: "onnx.ModelProto | str | os.PathLike[str]",
    *,
    check: bool = True,
    fold: bool = True,
    shapes: bool = True,
) -> Graph:
    """Read, validate, promote constants, fold, infer shapes and build the IR.

    The source (file or ModelProto) is never modified.
    """
    model, base_dir = read_model(source, check=check)
    if isinstance(source, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    promote_constants(model)
    if fold:
        alias_constant_identities(model)
        fold_constants(model, base_dir)
    if shapes:
        _list_initializers_as_inputs(model)
        model = infer_shapes(model)
        where = source if isinstance(source, (str, os.PathLike)) else "model"
        check_tensor_sizes(model, where)
        if check:
            check_channels(model, where)
    return from_proto(model, base_dir)


def _list_initializers_as_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be a graph input; shape inference ignores the others."""
    if model.ir_version >= 4:
        return
    have = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name not in have:
            model.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
