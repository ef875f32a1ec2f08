"""Constants at load: ``Constant`` nodes promoted to initializers, tied-weight Identity chains
aliased, and foldable subgraphs constant-folded with onnx-graphsurgeon (only the values are taken
from it; the rest of the model is kept as read). Overridable initializers (IR >= 4 initializers
that are also graph inputs) are never folded; folding never adds floating-point parameters and
never evaluates a tensor over FOLD_SIZE_LIMIT."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.logger import G_LOGGER

from .. import runtime  # noqa: F401  (quiets onnxruntime logging used by graphsurgeon)
from ..errors import first_line
from .shape_inference import PROTO_LIMIT, human_bytes, infer_shapes, tensor_bytes

log = logging.getLogger("onnx_depth")

# Constant folding never creates a tensor larger than this (bytes): weights computed by
# ConstantOfShape/Expand are folded, broadcast blow-ups are not.
FOLD_SIZE_LIMIT = 1 << 28
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


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


def fold_constants(model: onnx.ModelProto, base_dir: str | None) -> int:
    """Constant-fold with onnx-graphsurgeon; copy the folded values back into `model`.

    graphsurgeon evaluates the foldable subgraphs with onnxruntime; we only take the values of
    node outputs that became constants, drop nodes whose outputs all became constants, and
    leave the rest of the model (names, attributes, metadata) exactly as read.
    Returns the number of nodes removed.
    """
    if not _foldable_nodes(model):
        return 0
    G_LOGGER.severity = G_LOGGER.CRITICAL
    work = onnx.ModelProto()
    work.CopyFrom(model)
    if base_dir is not None and has_external_data(work):
        onnx.external_data_helper.load_external_data_for_model(work, base_dir)
    if work.ByteSize() >= PROTO_LIMIT:
        log.warning("model over 2 GB: constant folding skipped")
        return 0
    _hide_overridable(work)
    barriers = _size_barriers(work)
    if barriers:
        log.info("constant folding: %d tensor(s) left unfolded (over %s or of unknown size), e.g. %s",
                    len(barriers), human_bytes(FOLD_SIZE_LIMIT), sorted(barriers)[0])
    try:
        gg = gs.import_onnx(work)
        gg.fold_constants(size_threshold=FOLD_SIZE_LIMIT, error_ok=True,
                          should_exclude_node=lambda node: any(o.name in barriers for o in node.outputs))
    except Exception as e:  # graphsurgeon/ORT failing on an exotic graph must not stop us
        log.warning("constant folding skipped: %s", first_line(e))
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



def has_external_data(model: onnx.ModelProto) -> bool:
    return any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
