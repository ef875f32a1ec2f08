"""ConvSpec: an ONNX Conv's constant parameters, for any spatial rank.

ONNX ``Conv`` is a *cross-correlation*. For one spatial axis, input x with C_in channels,
zero-padded by (p_begin, p_end), and weight W of shape [O, C_in/g, k]:

    y[o, t] = b[o] + sum_{i in group(o)} sum_{u=0}^{k-1} W[o, i_local, u] * xp[i, s*t + d*u]
    xp[j]   = x[j - p_begin]   (0 outside 0 .. N-1)

The window of one output covers the *extent* e = d*(k-1) + 1 input positions, and the output
length is n_out = floor((N + p_begin + p_end - e) / s) + 1. In N-d every axis behaves this way
independently (weights are indexed by a multi-index u). Groups split the C_in input channels and
the O output channels into g contiguous, equally sized blocks; output block j sees only input
block j, so the weight holds only C_in/g input channels per output channel.

``to_block_dense`` re-expresses a g-group weight as a weight with fewer groups ``n`` (n | g),
block-diagonal inside each of the n blocks; ``to_dense`` is the special case n = 1 ([O, C_in, *k]).

Pads are in ONNX order (x1_begin, x2_begin, ..., x1_end, x2_end, ...). Only explicit pads are
represented; ``pads_from_auto_pad`` turns ONNX ``auto_pad`` into explicit pads.

Arrays are stored as given (no copy or dtype change). The kernels that build new specs compute in
float64 and return float32 (see ``onnx_depth.kernels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Mapping, Sequence

import numpy as np

OUT_DTYPE = np.float32
"""dtype of every array the kernels return (their arithmetic is float64)."""


def _int_tuple(values: Sequence[int] | None, n: int, default: int, name: str) -> tuple[int, ...]:
    if values is None:
        return (default,) * n
    t = tuple(int(v) for v in values)
    if len(t) != n:
        raise ValueError(f"{name} must have {n} entries, got {len(t)}: {t}")
    return t


@dataclass(eq=False)
class ConvSpec:
    """Constant parameters of one ONNX Conv (explicit pads, any spatial rank >= 1).

    weight: [O, C_in/group, *kernel]; bias: [O] or None; strides, dilations: one per spatial axis;
    pads: ONNX order (begins..., ends...); group: number of groups.
    """

    weight: np.ndarray
    bias: np.ndarray | None = None
    strides: tuple[int, ...] | None = None
    dilations: tuple[int, ...] | None = None
    pads: tuple[int, ...] | None = None
    group: int = 1

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight)
        if self.weight.ndim < 3:
            raise ValueError(f"conv weight must be [O, C_in/g, *kernel] with >= 1 spatial axis, got shape {self.weight.shape}")
        r = self.weight.ndim - 2
        self.strides = _int_tuple(self.strides, r, 1, "strides")
        self.dilations = _int_tuple(self.dilations, r, 1, "dilations")
        self.pads = _int_tuple(self.pads, 2 * r, 0, "pads")
        self.group = int(self.group)
        if any(s < 1 for s in self.strides):
            raise ValueError(f"strides must be >= 1, got {self.strides}")
        if any(d < 1 for d in self.dilations):
            raise ValueError(f"dilations must be >= 1, got {self.dilations}")
        if any(p < 0 for p in self.pads):
            raise ValueError(f"negative pads are not supported, got {self.pads}")
        if self.group < 1 or self.weight.shape[0] % self.group:
            raise ValueError(f"group {self.group} must divide the {self.weight.shape[0]} output channels")
        if any(k < 1 for k in self.weight.shape[1:]):
            raise ValueError(f"empty weight shape {self.weight.shape}")
        if self.bias is not None:
            self.bias = np.asarray(self.bias)
            if self.bias.shape != (self.weight.shape[0],):
                raise ValueError(f"bias must have shape ({self.weight.shape[0]},), got {self.bias.shape}")

    # ----- shape facts -------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Number of spatial axes."""
        return self.weight.ndim - 2

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) * self.group

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.weight.shape[2:])

    @property
    def pads_begin(self) -> tuple[int, ...]:
        return tuple(self.pads[: self.rank])

    @property
    def pads_end(self) -> tuple[int, ...]:
        return tuple(self.pads[self.rank :])

    @property
    def extent(self) -> tuple[int, ...]:
        """Input positions one output sees per axis: d*(k-1) + 1."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_shape, self.dilations))

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (channel multiplier O/g may be > 1)."""
        return self.group > 1 and self.weight.shape[1] == 1

    @property
    def is_pointwise(self) -> bool:
        """Extent 1 on every axis and no padding."""
        return all(e == 1 for e in self.extent) and not any(self.pads)

    @property
    def has_padding(self) -> bool:
        return any(self.pads)

    def output_spatial_shape(self, input_spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """floor((N + p_begin + p_end - extent) / stride) + 1 per axis; ValueError if < 1."""
        n = tuple(int(v) for v in input_spatial_shape)
        if len(n) != self.rank:
            raise ValueError(f"input spatial shape {n} has rank {len(n)}, conv has rank {self.rank}")
        out = tuple(
            (ni + pb + pe - e) // s + 1
            for ni, pb, pe, e, s in zip(n, self.pads_begin, self.pads_end, self.extent, self.strides)
        )
        if any(o < 1 for o in out) or any(ni + pb + pe < e for ni, pb, pe, e in zip(n, self.pads_begin, self.pads_end, self.extent)):
            raise ValueError(f"input spatial shape {n} is too small for extent {self.extent} with pads {self.pads}")
        return out

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Full NC... output shape for a full NC... input shape."""
        if len(input_shape) != self.rank + 2:
            raise ValueError(f"input shape {tuple(input_shape)} must be [N, C, *spatial] with {self.rank} spatial axes")
        if int(input_shape[1]) != self.in_channels:
            raise ValueError(f"input has {input_shape[1]} channels, conv expects {self.in_channels}")
        return (int(input_shape[0]), self.out_channels, *self.output_spatial_shape(input_shape[2:]))

    def macs(self, input_spatial_shape: Sequence[int], batch: int = 1) -> int:
        """Multiply-accumulates for one run: batch * O * (C_in/g) * prod(k) * prod(out spatial)."""
        out = self.output_spatial_shape(input_spatial_shape)
        return int(batch) * self.out_channels * int(self.weight.shape[1]) * prod(self.kernel_shape) * prod(out)

    @property
    def params(self) -> int:
        return int(self.weight.size) + (0 if self.bias is None else int(self.bias.size))

    # ----- conversions -------------------------------------------------------------------------
    def astype(self, dtype) -> "ConvSpec":
        return ConvSpec(
            self.weight.astype(dtype),
            None if self.bias is None else self.bias.astype(dtype),
            self.strides,
            self.dilations,
            self.pads,
            self.group,
        )

    def bias_or_zeros(self, dtype=np.float64) -> np.ndarray:
        return np.zeros(self.out_channels, dtype) if self.bias is None else self.bias.astype(dtype)

    def to_onnx_attrs(self) -> dict:
        """Attributes for onnx.helper.make_node('Conv', ...)."""
        return {
            "kernel_shape": list(self.kernel_shape),
            "strides": list(self.strides),
            "dilations": list(self.dilations),
            "pads": list(self.pads),
            "group": self.group,
        }

    @classmethod
    def from_onnx_attrs(
        cls,
        weight: np.ndarray,
        bias: np.ndarray | None,
        attrs: Mapping[str, object],
        input_spatial_shape: Sequence[int] | None = None,
    ) -> "ConvSpec":
        """Build from an ONNX Conv's attribute dict (auto_pad SAME_* needs the input shape
        unless every stride is 1)."""
        w = np.asarray(weight)
        r = w.ndim - 2
        ks = attrs.get("kernel_shape")
        if ks is not None and tuple(int(k) for k in ks) != tuple(w.shape[2:]):
            raise ValueError(f"kernel_shape {ks} does not match weight shape {w.shape}")
        strides = _int_tuple(attrs.get("strides"), r, 1, "strides")
        dilations = _int_tuple(attrs.get("dilations"), r, 1, "dilations")
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        if auto_pad in ("NOTSET", "", None):
            pads = _int_tuple(attrs.get("pads"), 2 * r, 0, "pads")
        else:
            extent = tuple(d * (k - 1) + 1 for k, d in zip(w.shape[2:], dilations))
            pads = pads_from_auto_pad(str(auto_pad), extent, strides, input_spatial_shape)
        return cls(w, bias, strides, dilations, pads, int(attrs.get("group", 1)))


def pads_from_auto_pad(
    auto_pad: str,
    extent: Sequence[int],
    strides: Sequence[int],
    input_spatial_shape: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Explicit ONNX pads for auto_pad VALID / SAME_UPPER / SAME_LOWER.

    SAME: total = max((ceil(N/s) - 1)*s + e - N, 0); SAME_UPPER puts the odd one at the end.
    With all strides 1 the total is e - 1 whatever N is, so no input shape is needed.
    """
    r = len(extent)
    if auto_pad == "VALID":
        return (0,) * (2 * r)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    totals = []
    for a, (e, s) in enumerate(zip(extent, strides)):
        if s == 1:
            totals.append(e - 1)
            continue
        if input_spatial_shape is None:
            raise ValueError("auto_pad SAME with stride > 1 needs the input spatial shape")
        n = int(input_spatial_shape[a])
        totals.append(max((-(-n // s) - 1) * s + e - n, 0))
    small = [t // 2 for t in totals]
    big = [t - t // 2 for t in totals]
    return tuple(small + big) if auto_pad == "SAME_UPPER" else tuple(big + small)


def to_block_dense(weight: np.ndarray, group: int, n_blocks: int) -> np.ndarray:
    """[O, C_in/g, *k] with g groups -> [n, O/n, C_in/n, *k], block-diagonal inside each block.

    n must divide g; each of the n blocks holds r = g/n original groups on its diagonal.
    The dtype is kept.
    """
    w = np.asarray(weight)
    if group % n_blocks:
        raise ValueError(f"{n_blocks} blocks do not divide {group} groups")
    O, ig = w.shape[:2]
    k = w.shape[2:]
    r = group // n_blocks
    og = O // group
    wr = w.reshape(n_blocks, r, og, ig, *k)
    out = np.zeros((n_blocks, r, og, r, ig, *k), dtype=w.dtype)
    for j in range(r):
        out[:, j, :, j] = wr[:, j]
    return out.reshape(n_blocks, r * og, r * ig, *k)


def to_dense(spec: ConvSpec) -> ConvSpec:
    """The same conv with group 1: the grouped weight expanded to a block-diagonal [O, C_in, *k]."""
    w = to_block_dense(spec.weight, spec.group, 1)[0]
    return ConvSpec(w, spec.bias, spec.strides, spec.dilations, spec.pads, 1)


def from_block_dense(block_weight: np.ndarray) -> tuple[np.ndarray, int]:
    """[n, O/n, C_in/n, *k] -> ([O, C_in/n, *k], group n)."""
    n = block_weight.shape[0]
    return block_weight.reshape(n * block_weight.shape[1], *block_weight.shape[2:]), n
