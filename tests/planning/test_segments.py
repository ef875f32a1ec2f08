"""planning.segments: chains, valid segments and options on zoo models and a hand-made DAG."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_depth import ir, runtime
from onnx_depth.kernels import add_identity, compose
from onnx_depth.latency_db.signature import signature
from onnx_depth.passes.layer_io import read_conv
from onnx_depth.planning import Geom, candidates, find_chains
from onnx_depth.planning.segments import compose_geom, residual_geom


def _run_shape(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    sess = runtime.make_session(model, optimization="all")
    out = runtime.run(sess, runtime.random_feeds(sess, 1)[0])
    return {k: v.shape for k, v in out.items()}


# ------------------------------------------------------------------ hand-made DAG
def test_hand_dag_chains(hand_graph: ir.Graph) -> None:
    chains = find_chains(hand_graph)
    conv = [c for c in chains if c.kind == "conv"]
    dense = [c for c in chains if c.kind == "dense"]
    assert [[lay.y for lay in c.layers] for c in conv] == [["a", "b", "c", "d", "e"], ["f", "g"]]
    a = conv[0]
    assert a.tensors == ["x", "ar", "br", "sr", "dr", "er"]
    assert [n.op_type if n else None for n in a.acts] == [None, "Relu", "LeakyRelu", "PRelu", "Clip", "Relu"]
    assert [(s.p, s.q, s.branch) for s in a.spans] == [(1, 3, None)]
    assert a.pinned == {3}  # sr also feeds the MaxPool
    # Concat cuts; the swish (Sigmoid + Mul) ends the second chain with no activation site
    assert conv[1].tensors == ["cat", "f", "g"] and conv[1].acts == [None, None, None]
    assert len(dense) == 1 and [lay.kind for lay in dense[0].layers] == ["dense"] * 3
    assert [n.op_type if n else None for n in dense[0].acts] == [None, "Relu", "Clip", None]
    assert [n.op_type for n in dense[0].layer(1).nodes] == ["Gemm"]


def test_ffn_dense_chains_with_prelu() -> None:
    from onnx_depth import zoo
    from tests.planning.conftest import lossless

    g = lossless(zoo.build("ffn_stack", seq=8, d_model=16, d_ff=32, blocks=2, act="prelu"))
    cands = candidates(g)
    assert [c.kind for c in cands.chains] == ["dense", "dense"]  # LayerNorm and the residual Add cut
    for c in cands.chains:
        assert c.L == 2 and c.acts[1].op_type == "PRelu" and not c.spans
        assert [n.op_type for n in c.layer(1).nodes] == ["MatMul", "Add"]  # 3-D: MatMul + bias Add
        m = cands.option(f"c{c.id}(0,2]:merge:1,2")
        assert m.geom == Geom.of_dense(16, 16) and m.macs < m.macs_original
        model = cands.model(m)
        assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
        assert list(_run_shape(model).values()) == [(1, 8, 16)]


def test_hand_dag_segment_validity(hand_graph: ir.Graph) -> None:
    a = find_chains(hand_graph)[0]
    assert a.check(0, 3) is None          # covers the span: residual fused
    assert a.check(1, 2) is None and a.check(1, 3) is None and a.check(2, 3) is None  # inside it
    assert "residual" in a.check(0, 2)    # would cut the span (1,3]
    assert "residual" in a.check(2, 4) or "position 3" in a.check(2, 4)
    assert "position 3" in a.check(0, 5)  # pinned
    assert a.check(3, 5) is None
    cands = candidates(hand_graph)
    for o in cands.options:
        assert cands.chains[o.chain].check(o.st, o.end) is None


def test_hand_dag_options_and_geometry(hand_graph: ir.Graph) -> None:
    cands = candidates(hand_graph)
    seg = cands.by_segment()
    a = cands.chains[0]
    kinds = {o.id for o in seg[(0, 0, 3)]}
    # a is 8->16 (not prunable); b and c are 3x3 16->16 (prunable)
    assert kinds == {"c0(0,3]:merge:1,2,3", "c0(0,3]:prune:1,3", "c0(0,3]:prune:1,2", "c0(0,3]:prune:1"}
    merged = cands.option("c0(0,3]:merge:1,2,3")
    assert merged.fused == (3,) and not merged.keeps_add
    # the geometry the option claims equals what the kernels produce on the real weights
    sa, sb, sc = (read_conv(hand_graph, lay.nodes[0], exclusive=False)[0] for lay in a.layers[:3])
    real = compose(sa, add_identity(compose(sb, sc)))
    assert merged.geom == Geom.of_conv(real)
    assert merged.geom.kernel == (5, 5) and merged.geom.c_in == 8 and merged.geom.c_out == 16
    only_c = cands.option("c0(0,3]:prune:1,3")
    assert only_c.geom == Geom.of_conv(compose(sa, add_identity(sc)))
    # a kept Add: segment (2,3] ends at the span's Add and reads t_1 from outside
    keep_c = cands.option("c0(2,3]:keep:3")
    assert keep_c.keeps_add and keep_c.fused == ()
    m = cands.model(keep_c)
    assert sorted(i.name for i in m.graph.input) == ["ar", "br"]
    assert [n.op_type for n in m.graph.node] == ["Conv", "Add", "PRelu"]
    # pruning d (1x1 16->16) leaves the Clip
    pd = cands.option("c0(3,4]:prune:-")
    assert [n.op_type for n in cands.model(pd).graph.node] == ["Identity", "Clip"]
    # the stride-2 conv e is not prunable
    assert all(o.kind != "prune" or 5 in o.kept for o in seg[(0, 4, 5)])
    # dense chain: Gemm∘Gemm∘MatMul merged into one dense layer 32->10
    d = [c for c in cands.chains if c.kind == "dense"][0]
    md = cands.option(f"c{d.id}(0,3]:merge:1,2,3")
    assert md.geom == Geom.of_dense(32, 10)
    assert [n.op_type for n in cands.model(md).graph.node] == ["Gemm"]


def test_every_option_model_runs_with_the_right_shape(hand_graph: ir.Graph) -> None:
    cands = candidates(hand_graph)
    for key, opts in cands.unique().items():
        o = opts[0]
        c = cands.chains[o.chain]
        m = cands.model(o)
        onnx.checker.check_model(m, full_check=True)
        assert list(_run_shape(m).values()) == [c.shapes[o.end]], o.label
        assert m.ir_version == hand_graph.meta.ir_version


def test_apply_original_plan_is_the_original(hand_graph: ir.Graph) -> None:
    cands = candidates(hand_graph)
    orig = ir.to_proto(hand_graph.copy(), check=False)
    same = cands.apply(cands.original_plan())
    assert signature(same) == signature(orig)
    # and a changed plan: merge (0,3], prune d, keep e; other chains kept
    plan = [cands.option("c0(0,3]:merge:1,2,3"), cands.option("c0(3,4]:prune:-"), cands.option("c0(4,5]:keep:5")]
    m = cands.apply(plan)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == 7 - 3 + 1 - 1 and "LeakyRelu" not in ops and "Identity" in ops
    assert _run_shape(m) == {"y": (1, 10)}


def test_check_plan_rejects_gaps_and_overlaps(hand_graph: ir.Graph) -> None:
    cands = candidates(hand_graph)
    with pytest.raises(ValueError, match="tile"):
        cands.check_plan([cands.option("c0(0,3]:merge:1,2,3"), cands.option("c0(4,5]:keep:5")])
    with pytest.raises(ValueError, match="tile"):
        cands.check_plan([cands.option("c0(0,3]:merge:1,2,3"), cands.option("c0(2,3]:keep:3"),
                          cands.option("c0(3,4]:keep:4"), cands.option("c0(4,5]:keep:5")])
    with pytest.raises(ValueError, match="ends at"):
        cands.check_plan([cands.option("c0(0,3]:merge:1,2,3")])


def test_bounds_limit_enumeration(hand_graph: ir.Graph) -> None:
    full = candidates(hand_graph)
    short = candidates(hand_graph, max_layers=1)
    assert all(o.end - o.st == 1 for o in short.options)
    assert {o.id for o in short.options} < {o.id for o in full.options}
    small_k = candidates(hand_graph, max_kernel=3)
    assert all(o.geom is None or o.kind == "keep" or o.geom.kind == "dense" or max(o.geom.extent) <= 3
               for o in small_k.options)
    no_dense = candidates(hand_graph, dense=False)
    assert all(c.kind == "conv" for c in no_dense.chains)


# ------------------------------------------------------------------ zoo models
def test_mobilenet_inverted_residual_blocks(mobilenet_graph: ir.Graph) -> None:
    cands = candidates(mobilenet_graph)
    conv = [c for c in cands.chains if c.kind == "conv"]
    assert len(conv) == 1  # the whole feature extractor is one chain: no cut point inside
    c = conv[0]
    assert len(c.spans) == 10 and not c.pinned
    for s in c.spans:
        assert s.q - s.p == 3 and s.branch is None
        expand, dw, project = (c.layer(j).geom for j in range(s.p + 1, s.q + 1))
        assert expand.kernel == (1, 1) and expand.group == 1 and expand.c_out == 6 * expand.c_in
        assert dw.kernel == (3, 3) and dw.group == dw.c_in == dw.c_out
        assert project.kernel == (1, 1) and project.c_out == expand.c_in
        assert c.acts[s.q] is None and c.acts[s.p + 1].op_type == "Clip" and c.acts[s.p + 2].op_type == "Clip"
        m = cands.option(f"c{c.id}({s.p},{s.q}]:merge:{s.p + 1},{s.p + 2},{s.q}")
        assert m.fused == (s.q,) and m.geom.kernel == (3, 3) and m.geom.group == 1
        assert m.macs < m.macs_original  # the merged block is cheaper on paper
        assert [n.op_type for n in cands.model(m).graph.node] == ["Conv"]
        # the dw conv can be pruned (stride 1, c_in == c_out): the block becomes 1x1∘1x1 + x
        p = cands.option(f"c{c.id}({s.p},{s.q}]:prune:{s.p + 1},{s.q}")
        assert p.geom.kernel == (1, 1)
    # a block merged with its successor grows to 5x5
    s0, s1 = c.spans[1], c.spans[2]
    assert s0.q == s1.p
    two = cands.option(f"c{c.id}({s0.p},{s1.q}]:merge:" + ",".join(map(str, range(s0.p + 1, s1.q + 1))))
    assert two.geom.kernel == (5, 5) and two.fused == (s0.q, s1.q)


def test_resnet18_basic_blocks(resnet18_graph: ir.Graph) -> None:
    cands = candidates(resnet18_graph)
    body = max(cands.chains, key=lambda c: c.L)
    assert body.L == 16 and len(body.spans) == 8
    assert [s.branch is not None for s in body.spans] == [False, False, True, False, True, False, True, False]
    for s in body.spans:
        assert s.q - s.p == 2
        assert body.acts[s.q].op_type == "Relu"  # the Add comes before the block's last Relu
        merged = cands.option(f"c{body.id}({s.p},{s.q}]:merge:{s.p + 1},{s.q}")
        if s.branch is None:  # 3x3∘3x3 + identity -> 5x5
            assert merged.geom.kernel == (5, 5) and merged.geom.strides == (1, 1)
            assert merged.macs > merged.macs_original  # merging 3x3+3x3 costs MACs
            cands.option(f"c{body.id}({s.p},{s.q}]:prune:{s.q}")  # conv1 pruned
        else:  # stride-2 block with a 1x1 downsample: parallel branch fused
            assert merged.geom.strides == (2, 2) and merged.geom.c_out == 2 * merged.geom.c_in
        cands.option(f"c{body.id}({s.q - 1},{s.q}]:prune:-")  # conv2 pruned: identity + Add + Relu
        keep = cands.option(f"c{body.id}({s.q - 1},{s.q}]:keep:{s.q}")
        ops = sorted(n.op_type for n in cands.model(keep).graph.node)
        assert ops == sorted(["Conv", "Add", "Relu"] + (["Conv"] if s.branch is not None else []))
    # a segment across a block boundary that does not cover the next block is invalid
    assert body.check(1, 3) is not None and body.check(0, 4) is None


@pytest.mark.parametrize("fixture", ["resnet18_graph", "mobilenet_graph"])
def test_zoo_option_models_run(fixture: str, request: pytest.FixtureRequest) -> None:
    graph = request.getfixturevalue(fixture)
    cands = candidates(graph)
    rng = np.random.default_rng(0)
    groups = list(cands.unique().values())
    for k in rng.choice(len(groups), size=min(25, len(groups)), replace=False):
        o = groups[int(k)][0]
        shapes = _run_shape(cands.model(o))
        assert list(shapes.values()) == [cands.chains[o.chain].shapes[o.end]], o.label
    assert all(o.kind == "keep" for o in cands.original_plan())
    for cid, i in cands.cuts()[:5]:
        assert list(_run_shape(cands.pair_model(cid, i)).values()) == [cands.chains[cid].shapes[i + 1]]


def test_geometry_helpers() -> None:
    dw = Geom("conv", 32, 32, 32, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    pw = Geom("conv", 32, 16, 1, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0))
    assert compose_geom(None, dw) == dw and compose_geom(dw, None) == dw
    m = compose_geom(dw, pw)
    assert (m.group, m.kernel, m.pads, m.c_in, m.c_out) == (1, (3, 3), (1, 1, 1, 1), 32, 16)
    assert compose_geom(dw, dw).group == 32 and compose_geom(dw, dw).kernel == (5, 5)
    with pytest.raises(ValueError):
        compose_geom(pw, dw)  # 16 channels into a 32-channel conv
    assert residual_geom(None, None, 32) is None
    assert residual_geom(dw, None, 32) == dw
    with pytest.raises(ValueError):
        residual_geom(pw, None, 32)
    s2 = Geom("conv", 16, 16, 1, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1))
    assert not s2.prunable and dw.prunable and not pw.prunable
