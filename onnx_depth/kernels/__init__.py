"""Pure-numpy math of exact linear rewrites (no graph code).

One concept per module, the math in each module's docstring:

- ``conv_spec``: ``ConvSpec`` (an ONNX Conv's constants, any spatial rank), shapes, MACs, group
  expansion (``to_dense``, ``to_block_dense``), auto_pad -> pads.
- ``conv_compose``: conv2∘conv1 -> one conv (``compose``), its padding ``exactness`` tier and the
  constant ``border_correction`` for CORRECTABLE chains; ``merge`` does all three.
- ``residual``: x + conv(x) (``add_identity``) and summed parallel convs (``add_parallel``).
- ``dense_compose``: Gemm/MatMul chains in the canonical y = x @ W + b orientation, BN between.
- ``bn_fold``: BatchNormalization (or any per-channel affine map) folded after Conv /
  ConvTranspose / a dense layer and before Conv / a dense layer.
- ``conv_reference``: a float64 numpy Conv used to compute constant maps.
- ``float32_range``: whether a weight composed in float64 can be written as float32 (finite, in a safe range).

Convention: every kernel computes in float64 and returns float32 arrays (``OUT_DTYPE``), the
dtype ONNX models use; inputs may be any float dtype. Unsupported configurations raise ValueError.
"""

from .bn_fold import (
    BnBeforeResult,
    affine_after_bn,
    affine_before_bn,
    fold_bn_after_conv,
    fold_bn_after_conv_transpose,
    fold_bn_before_conv,
    scale_conv_outputs,
)
from .conv_compose import MergeResult, Tier, border_correction, compose, exactness, merge
from .conv_spec import OUT_DTYPE, ConvSpec, pads_from_auto_pad, to_block_dense, to_dense
from .dense_compose import (
    add_identity_dense,
    affine_from_bn,
    compose_affine,
    compose_affine64,
    gemm_to_affine64,
)
from .float32_range import SAFE_MAX, float32_blocker
from .residual import add_identity, add_parallel

__all__ = [
    "OUT_DTYPE",
    "SAFE_MAX",
    "BnBeforeResult",
    "ConvSpec",
    "MergeResult",
    "Tier",
    "add_identity",
    "add_identity_dense",
    "add_parallel",
    "affine_after_bn",
    "affine_before_bn",
    "affine_from_bn",
    "border_correction",
    "compose",
    "compose_affine",
    "compose_affine64",
    "exactness",
    "float32_blocker",
    "gemm_to_affine64",
    "fold_bn_after_conv",
    "fold_bn_after_conv_transpose",
    "fold_bn_before_conv",
    "merge",
    "pads_from_auto_pad",
    "scale_conv_outputs",
    "to_block_dense",
    "to_dense",
]
