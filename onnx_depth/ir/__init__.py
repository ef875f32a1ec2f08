"""The networkx IR: load ONNX into a Graph, rewrite it, emit ONNX again."""

from .exporter import save, to_proto
from .graph import Graph, ModelMeta
from .importer import from_proto, load, read_model
from .node import Node
from .tensor import Initializer

__all__ = ["Graph", "ModelMeta", "Node", "Initializer", "load", "from_proto", "read_model", "to_proto", "save"]
