"""Read an ONNX model into the IR.

Steps: read and validate (clear errors for missing, non-ONNX, truncated and checker-failing
files) → promote ``Constant`` nodes to initializers → constant-fold foldable subgraphs with
onnx-graphsurgeon (only the values are taken from it; the rest of the model is kept as read)
→ infer shapes (onnx, falling back to onnxruntime's symbolic shape inference) → build the
:class:`Graph`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import InputError
from .graph import Graph, ModelMeta
from .node import Node
from .tensor import Initializer

log = logging.getLogger("onnx_depth")

_PROTO_LIMIT = 2**31 - 1
# Constant folding never creates a tensor larger than this (bytes): weights computed by
# ConstantOfShape/Expand are folded, broadcast blow-ups are not.
FOLD_SIZE_LIMIT = 1 << 28
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


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
            raise InputError(f"{path}: not an ONNX model or truncated file ({_first_line(e) or 'protobuf parse error'})") from e
        if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
            raise InputError(f"{path}: not an ONNX model (no graph, opset or IR version)")
        base_dir = str(path.parent)
    if check:
        _check(model, source)
    return model, base_dir


def _check(model: onnx.ModelProto, source: object) -> None:
    where = source if not isinstance(source, onnx.ModelProto) else "model"
    try:
        if isinstance(source, (str, os.PathLike)) and _has_external_data(model):
            onnx.checker.check_model(os.fspath(source), full_check=False)
        else:
            onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
        raise InputError(f"{where}: fails the ONNX checker: {_first_line(e)}") from e


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------- constants
def promote_constants(model: onnx.ModelProto) -> int:
    """Turn top-level ``Constant`` nodes into initializers (in place). Returns the count."""
    g = model.graph
    outputs = {o.name for o in g.output}
    keep, promoted = [], 0
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output[0] not in outputs:
            t = _constant_value(n)
            if t is not None:
                g.initializer.append(t)
                promoted += 1
                continue
        keep.append(n)
    if promoted:
        del g.node[:]
        g.node.extend(keep)
    return promoted


def _constant_value(n: onnx.NodeProto) -> onnx.TensorProto | None:
    name = n.output[0]
    for a in n.attribute:
        v = onnx.helper.get_attribute_value(a)
        if a.name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(v)
            t.name = name
            return t
        if a.name in ("value_float", "value_floats"):
            return numpy_helper.from_array(np.array(v, dtype=np.float32), name)
        if a.name in ("value_int", "value_ints"):
            return numpy_helper.from_array(np.array(v, dtype=np.int64), name)
    return None  # sparse_value / strings: left as a node


# ---------------------------------------------------------------------- tied weights
def alias_constant_identities(model: onnx.ModelProto) -> int:
    """Point the readers of ``Identity(W)``, W an initializer, at W itself and drop the Identity
    (in place; returns the count). Exporters write a tied weight (one parameter used by several
    layers) as one initializer plus an Identity per extra use; constant folding would turn each
    Identity into a copy of W, silently multiplying the parameters. Exact: Identity(W) = W,
    also when W is an overridable input. Kept: Identities whose output is a graph output or is
    read inside a subgraph."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    keep_names = {o.name for o in g.output} | _subgraph_reads(g)
    alias: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    for n in g.node:
        if (n.op_type == "Identity" and n.domain in ("", "ai.onnx") and len(n.input) == 1 and len(n.output) == 1
                and n.output[0] not in keep_names):
            src = alias.get(n.input[0], n.input[0])
            if src in inits:
                alias[n.output[0]] = src
                continue
        keep.append(n)
    if not alias:
        return 0
    for n in keep:
        for i, t in enumerate(n.input):
            if t in alias:
                n.input[i] = alias[t]
    del g.node[:]
    g.node.extend(keep)
    drop = set(alias)
    vi = [v for v in g.value_info if v.name not in drop]
    del g.value_info[:]
    g.value_info.extend(vi)
    return len(alias)


def _subgraph_reads(g: onnx.GraphProto) -> set[str]:
    """Names read by nodes of any subgraph (If/Loop/Scan bodies), recursively."""
    out: set[str] = set()
    for n in g.node:
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
            for sg in subs:
                out |= {i for m in sg.node for i in m.input} | _subgraph_reads(sg)
    return out


# ---------------------------------------------------------------------- folding
def _foldable_nodes(model: onnx.ModelProto) -> bool:
    consts = {t.name for t in model.graph.initializer}
    if model.ir_version >= 4:  # IR >= 4: an initializer that is also an input is overridable
        consts -= {i.name for i in model.graph.input}
    for n in model.graph.node:
        if n.op_type in _NONDETERMINISTIC or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            continue
        if all(i in consts for i in n.input if i):
            return True
    return False


def fold_constants(model: onnx.ModelProto, base_dir: str | None) -> int:
    """Constant-fold with onnx-graphsurgeon; copy the folded values back into `model`.

    graphsurgeon evaluates the foldable subgraphs with onnxruntime; we only take the values of
    node outputs that became constants, drop nodes whose outputs all became constants, and
    leave the rest of the model (names, attributes, metadata) exactly as read.
    Returns the number of nodes removed.
    """
    if not _foldable_nodes(model):
        return 0
    import onnx_graphsurgeon as gs

    from .. import runtime  # noqa: F401  (quiets onnxruntime logging used by graphsurgeon)

    from onnx_graphsurgeon.logger import G_LOGGER

    G_LOGGER.severity = G_LOGGER.CRITICAL
    work = onnx.ModelProto()
    work.CopyFrom(model)
    if base_dir is not None and _has_external_data(work):
        onnx.external_data_helper.load_external_data_for_model(work, base_dir)
    if work.ByteSize() >= _PROTO_LIMIT:
        log.warning("model over 2 GB: constant folding skipped")
        return 0
    try:
        gg = gs.import_onnx(work)
        gg.fold_constants(size_threshold=FOLD_SIZE_LIMIT, error_ok=True)
    except Exception as e:  # graphsurgeon/ORT failing on an exotic graph must not stop us
        log.warning("constant folding skipped: %s", _first_line(e))
        return 0
    produced = {o for n in model.graph.node for o in n.output if o}
    folded: dict[str, np.ndarray] = {}
    for name, t in gg.tensors().items():
        if name in produced and isinstance(t, gs.Constant):
            folded[name] = np.asarray(t.values)
    folded = _without_weight_growth(model, folded)
    if not folded:
        return 0
    keep: list[onnx.NodeProto] = []
    replaced: list[str] = []
    outputs = {o.name for o in model.graph.output}
    for n in model.graph.node:
        outs = [o for o in n.output if o]
        if outs and all(o in folded for o in outs) and not any(o in outputs for o in outs):
            replaced.extend(outs)
            continue
        keep.append(n)
    if not replaced:
        return 0
    removed = len(model.graph.node) - len(keep)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    for name in replaced:
        model.graph.initializer.append(numpy_helper.from_array(folded[name], name))
    return removed


def _without_weight_growth(model: onnx.ModelProto, folded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The folded values to use so that folding adds no floating-point parameters. Folding
    Transpose(W) or Mul(W, c) while W stays read elsewhere (a tied weight), or DequantizeLinear
    (int8 -> float), would add a float copy; then only the non-float values (shape arithmetic)
    are folded."""
    def floats(a) -> int:
        return int(a.size) if a.dtype.kind in "fc" else 0

    outputs = {o.name for o in model.graph.output}
    removed = [n for n in model.graph.node
               if [o for o in n.output if o] and all(o in folded for o in n.output if o) and not any(o in outputs for o in n.output)]
    gone = {id(n) for n in removed}
    reads = outputs | _subgraph_reads(model.graph) | {i for n in model.graph.node if id(n) not in gone for i in n.input}
    reads |= {i.name for i in model.graph.input}
    added = sum(floats(v) for k, v in folded.items() if k in reads)
    before = {i for n in removed for i in n.input}
    freed = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                if t.name in before and t.name not in reads
                and np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).kind in "fc")
    if added <= freed:
        return folded
    return {k: v for k, v in folded.items() if v.dtype.kind not in "fc"}


# ---------------------------------------------------------------------- shapes
def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with data propagation; onnxruntime's symbolic inference as fallback."""
    if model.ByteSize() < _PROTO_LIMIT:
        try:
            return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as e:  # noqa: BLE001 - fall back below
            log.info("onnx shape inference failed (%s); trying onnxruntime's", _first_line(e))
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
            if out is not None:
                return out
        except Exception as e:  # noqa: BLE001
            log.warning("shape inference failed: %s", _first_line(e))
    return model


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
    return from_proto(model, base_dir)


def _list_initializers_as_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be a graph input; shape inference ignores the others."""
    if model.ir_version >= 4:
        return
    have = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name not in have:
            model.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
