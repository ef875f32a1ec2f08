"""Candidate segments for LayerMerge, found on any DAG (no per-architecture code).

Run this on the graph after the LOSSLESS passes (BatchNorm folded, exact merges done).
One module per job:

* `chains`: chains of linear layers joined by junctions (residual Adds, removable activations
  of every kind `analysis.activations` recognizes), pinned positions;
* `geometry`: the shape-level `Geom` of an operator and how geometries compose;
* `algebra`: `fold_map`, the linear map of a segment (activations -> per-channel affine maps),
  in the geometry algebra and the real-weight algebra;
* `options`: valid segments and their keep / merge / prune options;
* `apply`: timing models, plans applied to graphs, and `Candidates`.
"""

from .algebra import ChannelAffine, GeomAlgebra, RealAlgebra, fold_map
from .apply import Candidates, candidates
from .chains import ACTIVATION_OPS, LINEARIZABLE_KINDS, JunctionActivation, Layer, LinearChain, Span, find_chains
from .geometry import Geom, compose_geom, residual_geom
from .options import (DEFAULT_MAX_KERNEL, DEFAULT_MAX_LAYERS, DEFAULT_MAX_MAC_RATIO, SegmentOption,
                      enumerate_options)

__all__ = [
    "ACTIVATION_OPS",
    "Candidates",
    "ChannelAffine",
    "DEFAULT_MAX_KERNEL",
    "DEFAULT_MAX_LAYERS",
    "DEFAULT_MAX_MAC_RATIO",
    "GeomAlgebra",
    "JunctionActivation",
    "LINEARIZABLE_KINDS",
    "Layer",
    "LinearChain",
    "RealAlgebra",
    "SegmentOption",
    "Span",
    "candidates",
    "compose_geom",
    "enumerate_options",
    "find_chains",
    "fold_map",
    "residual_geom",
]
