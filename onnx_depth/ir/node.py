"""An ONNX operator in the IR.

Attributes are kept as onnx AttributeProto objects, so anything the IR does not interpret
(subgraphs of If/Loop/Scan, sparse tensors, refs to function attributes) survives a round trip
untouched. `attr()` reads a value, `set_attr()` writes one.
"""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper


@dataclass(eq=False)
class Node:
    op_type: str
    inputs: list[str]
    outputs: list[str]
    name: str = ""
    domain: str = ""
    attributes: dict[str, onnx.AttributeProto] = field(default_factory=dict)
    doc_string: str = ""
    overload: str = ""
    metadata_props: list[tuple[str, str]] = field(default_factory=list)
    # Names from enclosing scopes that subgraph attributes read (If/Loop/Scan bodies).
    implicit_inputs: list[str] = field(default_factory=list)
    # Set by Graph when the node is added; the networkx key.
    id: int = -1

    def copy(self) -> "Node":
        """A copy to add to another graph: its own input/output/attribute/metadata lists (the
        AttributeProto objects are shared: rewrites replace them, never edit them in place)."""
        c = _copy.copy(self)
        c.inputs, c.outputs = list(self.inputs), list(self.outputs)
        c.attributes = dict(self.attributes)
        c.metadata_props = list(self.metadata_props)
        c.implicit_inputs = list(self.implicit_inputs)
        return c

    # ---- attributes -------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        a = self.attributes.get(name)
        if a is None:
            return default
        return helper.get_attribute_value(a)

    def set_attr(self, name: str, value: Any) -> None:
        self.attributes[name] = helper.make_attribute(name, value)

    def del_attr(self, name: str) -> None:
        self.attributes.pop(name, None)

    @property
    def has_subgraphs(self) -> bool:
        return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in self.attributes.values())

    def rename_outer(self, old: str, new: str) -> None:
        """Make the subgraphs read outer-scope tensor `new` where they read `old` (only in
        subgraphs where `old` is free, i.e. not defined locally, so nothing is shadowed)."""
        for key, a in list(self.attributes.items()):
            if a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                continue
            c = onnx.AttributeProto()
            c.CopyFrom(a)
            for g in ([c.g] if c.type == onnx.AttributeProto.GRAPH else list(c.graphs)):
                _rename_free(g, old, new)
            self.attributes[key] = c
        self.implicit_inputs = [new if t == old else t for t in self.implicit_inputs]

    @property
    def label(self) -> str:
        """Name for messages: the ONNX name if any, else op type and first output."""
        return self.name or f"{self.op_type}->{self.outputs[0] if self.outputs else '?'}"

    # ---- protobuf conversion ----------------------------------------------------
    @classmethod
    def from_proto(cls, p: onnx.NodeProto) -> "Node":
        n = cls(
            op_type=p.op_type,
            inputs=list(p.input),
            outputs=list(p.output),
            name=p.name,
            domain=p.domain,
            attributes={a.name: a for a in p.attribute},
            doc_string=p.doc_string,
            overload=getattr(p, "overload", ""),
            metadata_props=[(m.key, m.value) for m in getattr(p, "metadata_props", [])],
        )
        n.implicit_inputs = sorted(_outer_names(p))
        return n

    def to_proto(self) -> onnx.NodeProto:
        p = onnx.NodeProto()
        p.op_type = self.op_type
        p.input.extend(self.inputs)
        p.output.extend(self.outputs)
        if self.name:
            p.name = self.name
        if self.domain:
            p.domain = self.domain
        if self.doc_string:
            p.doc_string = self.doc_string
        if self.overload:
            p.overload = self.overload
        for k, v in self.metadata_props:
            e = p.metadata_props.add()
            e.key, e.value = k, v
        p.attribute.extend(self.attributes.values())
        return p


def _outer_names(p: onnx.NodeProto) -> set[str]:
    """Tensor names a node's subgraphs read from enclosing scopes."""
    names: set[str] = set()
    for a in p.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            names |= _graph_free_names(g)
    return names


def _graph_free_names(g: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in g.input} | {i.name for i in g.initializer}
    defined |= {i.values.name for i in g.sparse_initializer}
    used: set[str] = set()
    for n in g.node:
        used.update(x for x in n.input if x)
        used |= _outer_names(n)
        defined.update(n.output)
    used.update(o.name for o in g.output)
    return used - defined


def _rename_free(g: onnx.GraphProto, old: str, new: str) -> None:
    if old not in _graph_free_names(g):
        return
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
                _rename_free(sub, old, new)
    for o in g.output:
        if o.name == old:  # a branch output that is the outer tensor itself
            o.name = new
