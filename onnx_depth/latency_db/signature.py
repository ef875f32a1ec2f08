"""Canonical signature of a standalone ONNX model: what was timed, without names or weights.

The signature covers op types, domains, attributes (sorted; attributes equal to the schema
default are dropped), graph input/output and weight dtypes and shapes, the opset imports and the
topology (edges by position: graph input i, output j of the k-th node in canonical order,
weights by content description). It ignores node/tensor/graph names, doc strings, IR version
and the values of floating-point tensors. Small (<= 64 elements) non-float tensors keep their
values, because they are parameters (Reshape shapes, Pad pads, Slice starts) rather than weights.

Nodes are put in a canonical topological order (Kahn's algorithm, ties broken by each node's
own canonical description), so the proto's node order does not matter either.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from typing import Any

import onnx
from onnx import AttributeProto, helper

SIGNATURE_VERSION = "onnx-depth-signature-v1"
SMALL_TENSOR = 64


def _dtype(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:  # noqa: BLE001 - unusual types (e.g. float8) just keep their enum name
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _is_float(elem_type: int) -> bool:
    name = onnx.TensorProto.DataType.Name(elem_type)
    return any(s in name for s in ("FLOAT", "DOUBLE", "BFLOAT", "COMPLEX"))


def _tensor(t: onnx.TensorProto) -> list[Any]:
    desc: list[Any] = ["T", _dtype(t.data_type), list(t.dims)]
    n = 1
    for d in t.dims:
        n *= d
    external = t.data_location == onnx.TensorProto.EXTERNAL
    if not _is_float(t.data_type) and n <= SMALL_TENSOR and not external:
        values = onnx.numpy_helper.to_array(t).ravel().tolist()
        desc.append([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values])
    return desc


def _type(tp: onnx.TypeProto, symbols: dict[str, str]) -> list[Any]:
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        tt = tp.tensor_type
        shape: list[Any] | None = None
        if tt.HasField("shape"):
            shape = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    shape.append(d.dim_value)
                elif d.HasField("dim_param"):  # symbol names are names: number them by first use
                    shape.append(symbols.setdefault(d.dim_param, f"?{len(symbols)}"))
                else:
                    shape.append("?")
        return [_dtype(tt.elem_type), shape]
    if which == "sequence_type":
        return ["seq", _type(tp.sequence_type.elem_type, symbols)]
    if which == "optional_type":
        return ["opt", _type(tp.optional_type.elem_type, symbols)]
    return [which or "none"]


def _schema_defaults(node: onnx.NodeProto, opsets: dict[str, int]) -> dict[str, Any]:
    domain = node.domain or ""
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
    except Exception:  # noqa: BLE001 - unknown/custom op: no defaults to drop
        return {}
    out = {}
    for name, attr in schema.attributes.items():
        d = attr.default_value
        if d is not None and d.type != AttributeProto.UNDEFINED:
            out[name] = helper.get_attribute_value(d)
    return out


def _attr(a: AttributeProto, scope: dict[str, Any], opsets: dict[str, int], symbols: dict[str, str]) -> Any:
    t = a.type
    if t == AttributeProto.FLOAT:
        return repr(float(a.f))
    if t == AttributeProto.FLOATS:
        return [repr(float(v)) for v in a.floats]
    if t == AttributeProto.TENSOR:
        return _tensor(a.t)
    if t == AttributeProto.TENSORS:
        return [_tensor(x) for x in a.tensors]
    if t == AttributeProto.GRAPH:
        return _graph(a.g, opsets, scope, symbols)
    if t == AttributeProto.GRAPHS:
        return [_graph(g, opsets, scope, symbols) for g in a.graphs]
    if t == AttributeProto.SPARSE_TENSOR:
        return ["S", list(a.sparse_tensor.dims)]
    if t == AttributeProto.TYPE_PROTO:
        return _type(a.tp, symbols)
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
    return v


def _graph(g: onnx.GraphProto, opsets: dict[str, int], outer: dict[str, Any] | None = None,
           symbols: dict[str, str] | None = None) -> dict[str, Any]:
    """Canonical, name-free description of a graph (outer-scope names resolve through `outer`)."""
    symbols = {} if symbols is None else symbols
    inits = {t.name: t for t in g.initializer}
    ref: dict[str, Any] = dict(outer or {})
    for t in g.initializer:
        ref[t.name] = _tensor(t)
    inputs = [i for i in g.input if i.name not in inits]
    for k, i in enumerate(inputs):
        ref[i.name] = ["in", k]
    ref[""] = None

    def local(n: onnx.NodeProto) -> list[Any]:
        defaults = _schema_defaults(n, opsets)
        attrs = []
        for a in sorted(n.attribute, key=lambda a: a.name):
            if a.name in defaults and a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                try:
                    if helper.get_attribute_value(a) == defaults[a.name]:
                        continue
                except Exception:  # noqa: BLE001
                    pass
            attrs.append([a.name, _attr(a, ref, opsets, symbols)])
        return [n.op_type, n.domain or "", attrs, [ref[x] for x in n.input], len(n.output)]

    # Kahn's algorithm; among ready nodes the smallest canonical description goes first.
    consumers: dict[str, list[int]] = {}
    missing: list[int] = []
    for k, n in enumerate(g.node):
        names = {x for x in n.input if x not in ref}
        missing.append(len(names))
        for x in names:
            consumers.setdefault(x, []).append(k)
    heap: list[tuple[str, int]] = []
    done = [False] * len(g.node)

    def push(k: int) -> None:
        heapq.heappush(heap, (json.dumps(local(g.node[k]), sort_keys=True), k))

    def resolve(name: str, value: Any) -> None:
        ref[name] = value
        for k in consumers.pop(name, []):
            missing[k] -= 1
            if missing[k] == 0:
                push(k)

    for k in range(len(g.node)):
        if missing[k] == 0:
            push(k)
    nodes: list[Any] = []
    while len(nodes) < len(g.node):
        if not heap:  # a cycle or an undefined input: resolve the first blocker as "undefined"
            name = min(consumers, key=lambda x: min(consumers[x]))
            resolve(name, ["undefined"])
            continue
        key, k = heapq.heappop(heap)
        if done[k]:
            continue
        done[k] = True
        idx = len(nodes)
        nodes.append(json.loads(key))
        for j, o in enumerate(g.node[k].output):
            if o:
                resolve(o, ["n", idx, j])
    return {
        "inputs": [_type(i.type, symbols) for i in inputs],
        "outputs": [[ref.get(o.name, ["missing"]), _type(o.type, symbols)] for o in g.output],
        "nodes": nodes,
    }


def canonical(model: onnx.ModelProto) -> dict[str, Any]:
    """The name-free structure that `signature` hashes (useful for debugging mismatches)."""
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    return {
        "version": SIGNATURE_VERSION,
        "opsets": sorted([d, v] for d, v in opsets.items()),
        "graph": _graph(model.graph, opsets),
    }


def signature(model: onnx.ModelProto) -> str:
    """Hex SHA-256 of the canonical structure of `model`."""
    blob = json.dumps(canonical(model), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        inferred = model
    g = inferred.graph
    out: dict[str, list[int | str]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                            for d in vi.type.tensor_type.shape.dim]
    for t in g.initializer:
        out[t.name] = list(t.dims)
    return out


def _short(node: onnx.NodeProto, shapes: dict[str, list[int | str]]) -> str:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
        w_idx = 3 if op == "QLinearConv" else 1
        w = shapes.get(node.input[w_idx]) if len(node.input) > w_idx else None
        x = shapes.get(node.input[0])
        if not w or len(w) < 3:
            return op
        group = int(attrs.get("group", 1))
        kernel = "x".join(str(d) for d in w[2:])
        strides = attrs.get("strides") or [1]
        stride = "x".join(str(s) for s in strides) if len(set(strides)) > 1 else str(strides[0])
        dil = attrs.get("dilations") or [1]
        parts = [kernel, f"s{stride}", f"g{group}"] + ([f"d{max(dil)}"] if max(dil) > 1 else [])
        if op == "ConvTranspose":
            cin, cout = w[0], (w[1] * group if isinstance(w[1], int) else w[1])
        else:
            cin, cout = (w[1] * group if isinstance(w[1], int) else w[1]), w[0]
        at = f" @{'x'.join(str(d) for d in x[2:])}" if x and len(x) > 2 else ""
        return f"{op}[{','.join(parts)}] {cin}->{cout}{at}"
    if op in ("Gemm", "MatMul") and len(node.input) > 1:
        w = shapes.get(node.input[1])
        if w and len(w) >= 2:
            cin, cout = (w[-1], w[-2]) if op == "Gemm" and attrs.get("transB", 0) else (w[-2], w[-1])
            return f"{op} {cin}->{cout}"
    return op


def describe(model: onnx.ModelProto, max_nodes: int = 6) -> str:
    """Short human-readable description, e.g. "Conv[3x3,s1,g1] 64->64 @56x56 + Relu"."""
    shapes = _shapes(model)
    nodes = list(model.graph.node)
    if not nodes:
        return "(empty)"
    parts = [_short(n, shapes) for n in nodes]
    if len(parts) <= max_nodes:
        return " + ".join(parts)
    counts = Counter(n.op_type for n in nodes).most_common()
    top = ", ".join(f"{c} {op}" for op, c in counts[:4]) + (", ..." if len(counts) > 4 else "")
    return f"{parts[0]} + ... ({len(parts)} nodes: {top})"
