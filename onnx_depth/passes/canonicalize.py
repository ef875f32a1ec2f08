"""canonicalize: remove no-ops and bring linear layers into the forms the merge passes match.

Rewrites (all exact):
* Identity, and Dropout at inference (no mask output used, training_mode absent or false) -> bypass.
* Pad with all-zero pads; Reshape whose target equals its (static) input shape; Transpose with
  the identity permutation -> bypass.
* Pad(mode constant, value 0 or omitted, constant non-negative spatial pads only) -> Conv
  (auto_pad NOTSET or VALID): the pads are added to the Conv's own pads, since Conv pads with
  zeros:  conv(pad0(x, p), q) = conv(x, p + q), for any stride and dilation.
* MatMul(x [M,K], W const float32 [K,N]) + Add(b const [N] or [1,N]) with 2-D x -> Gemm(x, W, b)
  (opset >= 7).
* Conv with a 1x1 kernel, no padding and group 1 on a 1x1 spatial input (any stride: the output
  is 1x1 too), followed by Flatten(axis 1) or a Reshape to [N or -1 or 0, O], then a Gemm
  -> Flatten first, then the conv as a Gemm with B = W[:, :, 0, 0] and transB = 1
  (y = x W^T + b); Gemm∘Gemm then merges in merge_linear.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ir.patterns import bypass, const_or_none, constant_blocker, is_op, sole_consumer
from .base import PassContext, PassResult
from .layer_io import channel_vector, known_shape


def canonicalize(graph: Graph, ctx: PassContext | None = None) -> PassResult:
    res = PassResult("canonicalize")
    for node in graph.topological_order():
        if node.id not in graph.nx:
            continue
        op = node.op_type if node.domain in ("", "ai.onnx") else None
        if op == "Identity" or (op == "Dropout" and _inference_dropout(graph, node)):
            _count(res, bypass(graph, node), node, "pass-through")
        elif op == "Pad" and _zero_pads(graph, node):
            _count(res, bypass(graph, node), node, "zero padding")
        elif op == "Reshape" and _noop_reshape(graph, node):
            _count(res, bypass(graph, node), node, "reshape to the same shape")
        elif op == "Transpose" and _identity_perm(graph, node):
            _count(res, bypass(graph, node), node, "identity permutation")
        elif op == "Pad":
            _fuse_pad_into_conv(graph, node, res)
        elif op == "MatMul":
            _matmul_add_to_gemm(graph, node, res)
        elif op == "Conv":
            _pointwise_conv_to_gemm(graph, node, res)
    return res


def _count(res: PassResult, ok: bool, node: Node, what: str) -> None:
    if ok:
        res.changed += 1
        res.details.append(f"removed {node.label} ({what})")
    else:
        res.refuse(f"{node.label}: {what} kept because its output is a graph output read directly from its input")


def _inference_dropout(graph: Graph, node: Node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1] and graph.uses(node.outputs[1]):
        return False
    if len(node.inputs) > 2 and node.inputs[2]:
        t = const_or_none(graph, node, 2)
        return t is not None and not bool(np.asarray(t).item())
    return True


def _pads(graph: Graph, node: Node) -> np.ndarray | None:
    if "pads" in node.attributes:  # opset < 11
        return np.asarray(node.attr("pads"), dtype=np.int64)
    return None if len(node.inputs) < 2 else const_or_none(graph, node, 1)


def _zero_pads(graph: Graph, node: Node) -> bool:
    p = _pads(graph, node)
    return p is not None and not np.any(p) and (len(node.inputs) < 4 or not node.inputs[3])


def _noop_reshape(graph: Graph, node: Node) -> bool:
    shape = const_or_none(graph, node, 1)
    src = known_shape(graph, node.inputs[0])
    return shape is not None and src is not None and tuple(int(d) for d in shape) == src


def _identity_perm(graph: Graph, node: Node) -> bool:
    perm = node.attr("perm")
    return perm is not None and list(perm) == list(range(len(perm)))


def _fuse_pad_into_conv(graph: Graph, pad: Node, res: PassResult) -> None:
    conv = sole_consumer(graph, pad.outputs[0])
    if not is_op(conv, "Conv") or conv.inputs[0] != pad.outputs[0]:
        return
    mode = pad.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _pads(graph, pad)
    if "value" in pad.attributes:  # opset < 11
        value = pad.attr("value", 0.0)
    elif len(pad.inputs) > 2 and pad.inputs[2]:
        value = const_or_none(graph, pad, 2)
        if value is None:
            return res.refuse(f"{pad.label}: Pad value is not a constant, not fused into {conv.label}")
    else:
        value = None  # omitted: zero
    if len(pad.inputs) > 3 and pad.inputs[3]:
        return res.refuse(f"{pad.label}: Pad with axes input not fused into {conv.label}")
    if mode != "constant" or pads is None or (value is not None and float(np.asarray(value).item() if np.size(value) else 0) != 0.0):
        return res.refuse(f"{pad.label}: not a constant zero Pad, not fused into {conv.label}")
    auto_pad = conv.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID", ""):
        return res.refuse(f"{conv.label}: auto_pad {auto_pad}, Pad not fused")
    r = len(pads) // 2
    begin, end = pads[:r], pads[r:]
    if np.any(begin[:2]) or np.any(end[:2]) or np.any(pads < 0):
        return res.refuse(f"{pad.label}: pads batch/channel axes or crops, not fused")
    spatial = r - 2
    cp = list(conv.attr("pads", [0] * (2 * spatial))) if auto_pad != "VALID" else [0] * (2 * spatial)
    new = [int(cp[i] + begin[2 + i]) for i in range(spatial)] + [int(cp[spatial + i] + end[2 + i]) for i in range(spatial)]
    conv.del_attr("auto_pad")
    conv.set_attr("pads", new)
    graph.set_input(conv, 0, pad.inputs[0])
    graph.remove_node(pad)
    res.changed += 1
    res.details.append(f"fused {pad.label} into {conv.label}")


def _matmul_add_to_gemm(graph: Graph, mm: Node, res: PassResult) -> None:
    a_shape = graph.shape(mm.inputs[0])
    w = const_or_none(graph, mm, 1)
    if w is None or w.ndim != 2 or w.dtype != np.float32 or a_shape is None or len(a_shape) != 2:
        return
    if graph.meta.opset < 7:  # Gemm before opset 7 needs broadcast=1 for a [N] bias
        return
    add = sole_consumer(graph, mm.outputs[0])
    if not is_op(add, "Add"):
        return
    other = add.inputs[1] if add.inputs[0] == mm.outputs[0] else add.inputs[0]
    b = graph.const(other) if graph.is_constant(other) else None
    n = w.shape[1]
    # the bias rule of analysis.layer_unit (a per-feature vector over the last axis), not a scalar
    if b is None or b.size != n or b.dtype != w.dtype or channel_vector(b, n, 0) is None:
        return
    gemm = Node("Gemm", [mm.inputs[0], mm.inputs[1], other], [add.outputs[0]], name=graph.fresh_name(mm.name or "gemm"))
    if b.ndim == 2 or graph.uses(other) > 1:
        bias = graph.add_const(b.reshape(n), other + "_vec")
        gemm.inputs[2] = bias
    graph.replace_chain([mm, add], [gemm])
    res.changed += 1
    res.details.append(f"MatMul+Add {mm.label} -> Gemm")


def _pointwise_conv_to_gemm(graph: Graph, conv: Node, res: PassResult) -> None:
    x = graph.shape(conv.inputs[0])
    w = const_or_none(graph, conv, 1)
    if x is None or w is None or w.dtype != np.float32 or len(x) != 4 or tuple(x[2:]) != (1, 1) or w.shape[2:] != (1, 1):
        return
    if conv.attr("group", 1) != 1 or any(conv.attr("pads", [0, 0, 0, 0])):
        return
    if conv.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return
    flat = sole_consumer(graph, conv.outputs[0])
    if not is_op(flat, "Flatten", "Reshape") or flat.inputs[0] != conv.outputs[0]:
        return
    if is_op(flat, "Flatten") and flat.attr("axis", 1) not in (1, -3):
        return
    if is_op(flat, "Reshape"):
        # [N, O, 1, 1] -> [N, O]: target (N or -1 or 0, O)
        t = const_or_none(graph, flat, 1)
        if t is None or t.shape != (2,) or int(t[1]) != w.shape[0]:
            return
        zero_copies = not flat.attr("allowzero", 0)
        if not (int(t[0]) == -1 or (int(t[0]) == 0 and zero_copies) or (isinstance(x[0], int) and int(t[0]) == x[0] >= 0)):
            return
    gemm2 = sole_consumer(graph, flat.outputs[0])
    if not is_op(gemm2, "Gemm") or gemm2.inputs[0] != flat.outputs[0] or gemm2.attr("transA", 0):
        return
    if constant_blocker(graph, conv, 1):
        return
    # Flatten(x) -> Gemm(conv) -> old Flatten output
    flat_in = graph.fresh_name(conv.inputs[0] + "_flat")
    new_flat = Node("Flatten", [conv.inputs[0]], [flat_in], name=graph.fresh_name("flatten"), attributes={})
    new_flat.set_attr("axis", 1)
    wb = graph.add_const(w.reshape(w.shape[0], w.shape[1]), conv.inputs[1] + "_gemm")
    inputs = [flat_in, wb] + ([conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else [])
    g1 = Node("Gemm", inputs, [flat.outputs[0]], name=graph.fresh_name(conv.name or "gemm"))
    g1.set_attr("transB", 1)
    graph.replace_chain([conv, flat], [new_flat, g1])
    graph.set_shape(flat_in, graph.elem_type(flat.outputs[0]) or 1, [d if (not isinstance(d, int) or d >= 0) else None for d in x[:2]])
    res.changed += 1
    res.details.append(f"1x1 {conv.label} on 1x1 input -> Gemm")
