"""Plans applied to graphs: the standalone timing model of one option, whole plans applied to
a copy of the model (random weights for timing, or the real operators of planning.realize),
and `Candidates`, the chains of a graph with every option of every valid segment.

A segment's original nodes are its layers, the activations at its positions (the one at `end`
included; a decomposed activation is all of its nodes), the residual Adds joined inside or at
`end` and their shortcut layers. Rewriting an option replaces the layers, the removed
activations and the fused Adds by one operator (Conv; Gemm / MatMul + Add; Identity; Mul by a
scalar) writing the tensor the last of them wrote; `keep` changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx

from ...ir import Graph, Node
from ...ir.exporter import to_proto
from ...ir.extract import extract, extract_graph
from ...kernels import ConvSpec
from ...passes.layer_io import conv_node, dense_nodes
from .chains import LinearChain, find_chains
from .options import DEFAULT_MAX_KERNEL, DEFAULT_MAX_LAYERS, DEFAULT_MAX_MAC_RATIO, SegmentOption, enumerate_options


def _segment_nodes(chain: LinearChain, st: int, end: int) -> list[Node]:
    """The original nodes of segment (st, end]: layers, activations (the one at `end`
    included), residual Adds joined inside or at `end` and their shortcut layers."""
    out: list[Node] = []
    for j in range(st + 1, end + 1):
        out.extend(chain.layer(j).nodes)
        sp = chain.span_at(j)
        if sp is not None:
            out.append(sp.add)
            if sp.branch is not None:
                out.extend(sp.branch.nodes)
        if chain.acts[j] is not None:
            out.extend(chain.acts[j].nodes)
    return out


def _by_output(g: Graph, node: Node) -> Node:
    n = g.producer(node.outputs[0])
    if n is None:
        raise ValueError(f"{node.label} is not in the graph")
    return n


def _rewrite(g: Graph, chain: LinearChain, opt: SegmentOption, rng: np.random.Generator, op=None) -> None:
    """Replace the option's segment in `g` (a graph holding the segment's tensors by name) by
    its operator: `op` as `fold_map` returns it in a real-weight algebra (planning.realize), or
    random weights when None. `keep` changes nothing."""
    if opt.kind == "keep":
        return
    old: list[Node] = []
    for j in range(opt.st + 1, opt.end + 1):
        old.extend(chain.layer(j).nodes)
        if j < opt.end and chain.acts[j] is not None:
            old.extend(chain.acts[j].nodes)
        sp = chain.span_at(j)
        if sp is not None and j in opt.fused:
            old.append(sp.add)
            if sp.branch is not None:
                old.extend(sp.branch.nodes)
    old = [_by_output(g, n) for n in old]
    end_span = chain.span_at(opt.end)
    out = end_span.add.outputs[0] if (end_span is not None and opt.end in opt.fused) else chain.layer(opt.end).y
    x = chain.tensors[opt.st]
    base = f"merged.c{opt.chain}.{opt.st}_{opt.end}"
    if opt.geom is None and isinstance(op, (ConvSpec, tuple)):  # a fitted adaptor for a dropped block (planning.adaptor)
        new = [conv_node(g, op, x, out, base)] if isinstance(op, ConvSpec) else dense_nodes(g, op[0], op[1], x, out, base)
    elif opt.geom is None:
        if opt.scale:
            k = 2.0 if op is None else float(op)
            two = g.add_const(np.array(k, np.float32), base + ".scale")
            new = [Node("Mul", [x, two], [out], name=g.fresh_name(base))]
        else:
            new = [Node("Identity", [x], [out], name=g.fresh_name(base))]
    elif opt.geom.kind == "conv":
        new = [conv_node(g, opt.geom.random_spec(rng) if op is None else op, x, out, base)]
    else:
        if op is None:
            n_in, n_out = opt.geom.c_in, opt.geom.c_out
            W = rng.standard_normal((n_in, n_out), dtype=np.float32) * np.float32(np.sqrt(1.0 / n_in))
            b = rng.standard_normal(n_out, dtype=np.float32) * np.float32(0.01)
        else:
            # a bias-free chain composes to b = None: np.asarray(None, np.float32) would be a NaN scalar
            W, b = np.asarray(op[0], np.float32), (None if op[1] is None else np.asarray(op[1], np.float32))
        new = dense_nodes(g, W, b, x, out, base)
    g.replace_chain(old, new)


@dataclass(eq=False)
class Candidates:
    """The chains of a graph and every option of every valid segment (see `candidates`)."""

    graph: Graph
    chains: list[LinearChain]
    options: list[SegmentOption]
    settings: dict
    # activation output tensor -> (a, b) per channel, fitted on calibration data
    # (planning.activation_fit); activations without one use their data-free stand-in
    activation_maps: dict = field(default_factory=dict)
    activation_nmse: dict = field(default_factory=dict)  # activation output -> NMSE of its affine map
    activation_source: object = None  # the calibration set the maps were fitted on

    def __post_init__(self) -> None:
        self._by_id = {o.id: o for o in self.options}

    def option(self, option_id: str) -> SegmentOption:
        return self._by_id[option_id]

    def keep(self, chain_id: int, j: int) -> SegmentOption:
        """The `keep` option of layer j of a chain alone: segment (j-1, j]."""
        return self._by_id[f"c{chain_id}({j - 1},{j}]:keep:{j}"]

    def keeps(self, opt: SegmentOption) -> list[SegmentOption]:
        """The single-layer `keep` options of the layers `opt` covers (what keeping them costs)."""
        return [self.keep(opt.chain, j) for j in opt.layers]

    def by_segment(self) -> dict[tuple[int, int, int], list[SegmentOption]]:
        """{(chain, st, end): options}: the table the DP reads."""
        out: dict[tuple[int, int, int], list[SegmentOption]] = {}
        for o in self.options:
            out.setdefault((o.chain, o.st, o.end), []).append(o)
        return out

    def unique(self) -> dict[str, list[SegmentOption]]:
        """Options grouped by structural key: one timing model per group."""
        out: dict[str, list[SegmentOption]] = {}
        for o in self.options:
            out.setdefault(o.key, []).append(o)
        return out

    def original_plan(self) -> list[SegmentOption]:
        """The plan that is the original model: every layer its own `keep` segment."""
        plan = []
        for c in self.chains:
            for j in range(1, c.L + 1):
                plan.append(self.keep(c.id, j))
        return plan

    def check_plan(self, plan: Iterable[SegmentOption]) -> None:
        """ValueError unless `plan` tiles every chain with known options (a chain left out is
        taken as kept; a chain mentioned must be covered 0..L without gaps or overlaps)."""
        per: dict[int, list[SegmentOption]] = {}
        for o in plan:
            if self._by_id.get(o.id) is not o and self._by_id.get(o.id) != o:
                raise ValueError(f"option {o.id} is not a candidate of this graph")
            per.setdefault(o.chain, []).append(o)
        for cid, opts in per.items():
            opts.sort(key=lambda o: o.st)
            pos = 0
            for o in opts:
                if o.st != pos:
                    raise ValueError(f"chain {cid}: segments do not tile positions (gap or overlap at {pos})")
                pos = o.end
            if pos != self.chains[cid].L:
                raise ValueError(f"chain {cid}: plan ends at {pos}, chain has {self.chains[cid].L} layers")

    def fill(self, chosen: Iterable[SegmentOption]) -> list[SegmentOption]:
        """`chosen` plus single-layer `keep` options for every layer they leave uncovered
        (ValueError if chosen options overlap)."""
        plan = list(chosen)
        covered: set[tuple[int, int]] = set()
        for o in plan:
            for j in o.layers:
                if (o.chain, j) in covered:
                    raise ValueError(f"option {o.id} overlaps another at layer {j}")
                covered.add((o.chain, j))
        for c in self.chains:
            for j in range(1, c.L + 1):
                if (c.id, j) not in covered:
                    plan.append(self.keep(c.id, j))
        self.check_plan(plan)
        return plan

    def complete(self, plan: Iterable[SegmentOption]) -> list[SegmentOption]:
        """`plan` plus `keep` options for the chains it does not mention."""
        plan = list(plan)
        self.check_plan(plan)
        have = {o.chain for o in plan}
        return plan + [o for o in self.original_plan() if o.chain not in have]

    def model(self, opt: SegmentOption, *, seed: int = 0) -> onnx.ModelProto:
        """Standalone timing model of one option: the segment's nodes (ir.extract, random
        weights), the layers replaced by the option's operator (random weights), the activation
        at `end` and a kept residual Add as in the graph. Input t_st (plus the shortcut tensor of
        a kept Add), output t_end."""
        chain = self.chains[opt.chain]
        nodes = _segment_nodes(chain, opt.st, opt.end)
        sub = extract_graph(self.graph, nodes, random_weights=True, seed=seed,
                            outputs=[chain.tensors[opt.end]], name=f"segment.{opt.id}")
        _rewrite(sub, chain, opt, np.random.default_rng(seed))
        return to_proto(sub, check=False)

    # ---- cuts: what a segment boundary costs standalone ----------------------------------
    def cuts(self) -> list[tuple[int, int]]:
        """(chain, position) of every internal position: where the original plan cuts."""
        return [(c.id, i) for c in self.chains for i in range(1, c.L)]

    def pair_key(self, chain_id: int, i: int) -> str:
        """Structural key of the pair model at internal position i: layers i and i+1 as they
        are (see `pair_model`)."""
        c = self.chains[chain_id]
        a, b = self.keep(chain_id, i), self.keep(chain_id, i + 1)
        rel = [None if c.span_at(q) is None else c.span_at(q).p - (i - 1) for q in (i, i + 1)]
        return json.dumps(["pair", a.key, b.key, rel], separators=(",", ":"))

    def pair_model(self, chain_id: int, i: int, *, seed: int = 0) -> onnx.ModelProto:
        """Layers i and i+1 with their junctions, unchanged, as one standalone model (random
        weights). With the two single-layer models it measures what cutting at position i
        costs standalone: cut(i) = keep(i) + keep(i+1) - pair(i)."""
        c = self.chains[chain_id]
        if not 1 <= i < c.L:
            raise ValueError(f"position {i} is not internal to chain {chain_id} (1..{c.L - 1})")
        return extract(self.graph, _segment_nodes(c, i - 1, i + 1), random_weights=True, seed=seed,
                       outputs=[c.tensors[i + 1]], name=f"pair.c{chain_id}.{i}")

    def apply(self, plan: Iterable[SegmentOption], *, seed: int = 0) -> onnx.ModelProto:
        """The whole model with `plan` applied (new operators get random weights: for timing)."""
        return to_proto(self.apply_graph(plan, seed=seed), check=False)

    def apply_graph(self, plan: Iterable[SegmentOption], operators: "dict[str, object] | None" = None, *,
                    seed: int = 0, partial: bool = False) -> Graph:
        """A copy of the graph with `plan` applied. operators: option id -> its operator in a
        real-weight algebra (planning.realize); options without one get random weights.
        partial: `plan` may cover only some segments (the rest stays as it is)."""
        plan = list(plan)
        if partial:
            self.fill(plan)
        else:
            self.check_plan(plan)
        g = self.graph.copy()
        rng = np.random.default_rng(seed)
        for o in plan:
            _rewrite(g, self.chains[o.chain], o, rng, None if operators is None else operators.get(o.id))
        g.remove_dead_nodes()
        return g


def candidates(graph: Graph, *, max_layers: int = DEFAULT_MAX_LAYERS, max_kernel: int = DEFAULT_MAX_KERNEL,
               max_mac_ratio: float = DEFAULT_MAX_MAC_RATIO, dense: bool = True) -> Candidates:
    """Chains and every candidate option of `graph` (run the LOSSLESS passes first)."""
    if max_layers < 1:
        raise ValueError(f"max_layers must be >= 1, got {max_layers}")
    chains = find_chains(graph, dense=dense)
    options: list[SegmentOption] = []
    for c in chains:
        options.extend(enumerate_options(c, graph, max_layers=max_layers, max_kernel=max_kernel,
                                         max_mac_ratio=max_mac_ratio))
    settings = {"max_layers": max_layers, "max_kernel": max_kernel, "max_mac_ratio": max_mac_ratio, "dense": dense}
    return Candidates(graph, chains, options, settings)


__all__ = ["Candidates", "candidates"]
