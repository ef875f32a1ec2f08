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
import stat
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
        if isinstance(source, (str, os.PathLike)) and _has_external_data(model):
            onnx.checker.check_model(os.fspath(source), full_check=False)
        else:
            onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
        raise InputError(f"{where}: fails the ONNX checker: {_first_line(e)}") from e
    if model.ByteSize() < _PROTO_LIMIT:
        try:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
            raise InputError(f"{where}: fails ONNX shape inference: {_first_line(e)}") from e


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
    consts = {t.name for t in model.graph.initializer} - overridable_initializers(model)
    for n in model.graph.node:
        if n.op_type in _NONDETERMINISTIC or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            continue
        if all(i in consts for i in n.input if i):
            return True
    return False


def overridable_initializers(model: onnx.ModelProto) -> set[str]:
    """IR >= 4: initializers that are also graph inputs; a caller may feed them, so they are
    inputs with a default value, never constants (nothing depending on them is folded)."""
    if model.ir_version < 4:
        return set()
    inputs = {i.name for i in model.graph.input}
    return {t.name for t in model.graph.initializer if t.name in inputs}


def _hide_overridable(work: onnx.ModelProto) -> None:
    """Drop overridable initializers from the copy graphsurgeon folds: they stay graph inputs
    (variables), so no value computed from them can become a constant."""
    names = overridable_initializers(work)
    if names:
        keep = [t for t in work.graph.initializer if t.name not in names]
        del work.graph.initializer[:]
        work.graph.initializer.extend(keep)


# ---------------------------------------------------------------------- sizes
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


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _size_barriers(work: onnx.ModelProto) -> set[str]:
    """Outputs of nodes that graphsurgeon must not evaluate: inferred larger than
    FOLD_SIZE_LIMIT, or of unknown size (a ConstantOfShape/Expand/Tile/Range could be anything).
    Decided from shape inference BEFORE anything is evaluated; excluding a node also keeps its
    consumers unfolded."""
    inferred = infer_shapes(work)  # returns a new model; `work` is our copy anyway
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    barriers: set[str] = set()
    for n in work.graph.node:
        for o in n.output:
            if not o:
                continue
            b = tensor_bytes(known[o]) if o in known else None
            if b is None or b > FOLD_SIZE_LIMIT:
                barriers.add(o)
    return barriers


def check_tensor_sizes(model: onnx.ModelProto, where: str = "model") -> None:
    """Refuse (InputError, exit 2) a model whose inferred tensors need more than
    max_tensor_bytes() at batch 1: evaluating it (--check, calibration, profiling) would
    exhaust memory. Uses shapes already inferred into `model`; evaluates nothing."""
    limit = max_tensor_bytes()
    g = model.graph
    for v in list(g.value_info) + list(g.output) + list(g.input):
        b = tensor_bytes(v)
        if b is not None and b > limit:
            raise InputError(f"{where}: tensor {v.name!r} would need {_human_bytes(b)} (over the "
                             f"{_human_bytes(limit)} limit, $ONNX_DEPTH_MAX_TENSOR_BYTES); refusing to evaluate it")


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
    _hide_overridable(work)
    barriers = _size_barriers(work)
    if barriers:
        log.info("constant folding: %d tensor(s) left unfolded (over %s or of unknown size), e.g. %s",
                    len(barriers), _human_bytes(FOLD_SIZE_LIMIT), sorted(barriers)[0])
    try:
        gg = gs.import_onnx(work)
        gg.fold_constants(size_threshold=FOLD_SIZE_LIMIT, error_ok=True,
                          should_exclude_node=lambda node: any(o.name in barriers for o in node.outputs))
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
