"""Graph rewrites. Each pass is a function ``(Graph, PassContext) -> PassResult``."""

from .base import Pass, PassContext, PassResult, run_to_fixed_point
from .canonicalize import canonicalize
from .exact_activations import exact_activations
from .fold_bn import fold_bn
from .merge_linear import merge_linear

# The lossless pipeline: rewrites that change no output beyond fp32 rounding.
LOSSLESS: list[Pass] = [canonicalize, fold_bn, exact_activations, merge_linear]

__all__ = [
    "LOSSLESS",
    "Pass",
    "PassContext",
    "PassResult",
    "canonicalize",
    "exact_activations",
    "fold_bn",
    "merge_linear",
    "run_to_fixed_point",
]
