"""Shape-level geometry of linear operators (`Geom`) and how it composes.

Only shapes matter for latency, so merged geometry is computed by the kernel functions on
one-channel proxy weights (the same `kernels.compose` / `add_identity` / `add_parallel` code the
real-weight merge uses; groups combine by gcd, as in compose) and timing models get random
weights. Conv1 (k1, s1, d1) then Conv2 (k2, s2, d2) gives K = d1 (k1-1) + s1 d2 (k2-1) + 1,
stride s1 s2; dense n_in -> m then m -> n_out gives n_in -> n_out; x + L(x) keeps L's geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd, prod
from typing import Sequence

import numpy as np

from ...kernels import ConvSpec, add_identity, add_parallel, compose


@dataclass(frozen=True)
class Geom:
    """Shape-level description of one linear operator: a conv (channels, groups, kernel,
    strides, dilations, explicit pads) or a dense layer (n_in -> n_out over the last axis)."""

    kind: str
    c_in: int
    c_out: int
    group: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()

    @classmethod
    def of_conv(cls, spec: ConvSpec) -> "Geom":
        return cls("conv", spec.in_channels, spec.out_channels, spec.group, spec.kernel_shape,
                   tuple(spec.strides), tuple(spec.dilations), tuple(spec.pads))

    @classmethod
    def of_dense(cls, n_in: int, n_out: int) -> "Geom":
        return cls("dense", int(n_in), int(n_out))

    @property
    def extent(self) -> tuple[int, ...]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations))

    def proxy(self) -> ConvSpec:
        """A one-channel, one-group ConvSpec of this geometry: the kernel functions' kernel,
        stride, dilation and padding rules do not depend on channels or groups, so they run on
        it in microseconds (the group of a composition is the gcd of the groups)."""
        w = np.zeros((1, 1, *self.kernel), np.float32)
        return ConvSpec(w, None, self.strides, self.dilations, self.pads, 1)

    @property
    def size_preserving(self) -> bool:
        """Output grid == input grid for every input size (stride 1, pads sum to extent - 1)."""
        if self.kind == "dense":
            return True
        r = len(self.kernel)
        return all(s == 1 for s in self.strides) and all(
            self.pads[a] + self.pads[a + r] == self.extent[a] - 1 for a in range(r))

    @property
    def prunable(self) -> bool:
        """May be replaced by identity: c_in == c_out and (conv) stride 1, size-preserving."""
        return self.c_in == self.c_out and self.size_preserving

    def out_shape(self, in_shape: Sequence[int]) -> tuple[int, ...]:
        if self.kind == "dense":
            return (*tuple(in_shape[:-1]), self.c_out)
        sp = self.proxy().output_spatial_shape(tuple(in_shape[2:]))
        return (int(in_shape[0]), self.c_out, *sp)

    def macs(self, in_shape: Sequence[int]) -> int:
        if self.kind == "dense":
            return int(prod(in_shape[:-1])) * self.c_in * self.c_out
        out = self.out_shape(in_shape)
        return int(in_shape[0]) * self.c_out * (self.c_in // self.group) * prod(self.kernel) * prod(out[2:])

    def describe(self) -> str:
        if self.kind == "dense":
            return f"Dense {self.c_in}->{self.c_out}"
        k = "x".join(map(str, self.kernel))
        s = "x".join(map(str, self.strides)) if len(set(self.strides)) > 1 else str(self.strides[0])
        parts = [k, f"s{s}", f"g{self.group}"]
        if max(self.dilations) > 1:
            parts.append(f"d{max(self.dilations)}")
        if any(self.pads):
            parts.append("p" + ",".join(map(str, self.pads)) if len(set(self.pads)) > 1 else f"p{self.pads[0]}")
        return f"Conv[{','.join(parts)}] {self.c_in}->{self.c_out}"

    def random_spec(self, rng: np.random.Generator) -> ConvSpec:
        """A ConvSpec of this geometry at full size with random weights and bias (for timing)."""
        shape = (self.c_out, self.c_in // self.group, *self.kernel)
        fan_in = max(int(prod(shape[1:])), 1)
        w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / fan_in)))
        b = rng.standard_normal(self.c_out, dtype=np.float32) * np.float32(0.01)
        return ConvSpec(w, b, self.strides, self.dilations, self.pads, self.group)


@lru_cache(maxsize=4096)
def compose_geom(a: Geom | None, b: Geom | None) -> Geom | None:
    """Geometry of b∘a (None is the identity). ValueError when they do not chain."""
    if a is None:
        return b
    if b is None:
        return a
    if a.kind != b.kind:
        raise ValueError(f"cannot compose {a.kind} with {b.kind}")
    if a.c_out != b.c_in:
        raise ValueError(f"{b.describe()} expects {b.c_in} channels, {a.describe()} produces {a.c_out}")
    if a.kind == "dense":
        return Geom.of_dense(a.c_in, b.c_out)
    s = compose(a.proxy(), b.proxy())
    return Geom("conv", a.c_in, b.c_out, gcd(a.group, b.group), s.kernel_shape, tuple(s.strides),
                tuple(s.dilations), tuple(s.pads))


@lru_cache(maxsize=4096)
def residual_geom(inner: Geom | None, branch: Geom | None, channels: int) -> Geom | None:
    """Geometry of branch(x) + inner(x) (branch None: the identity shortcut x). None: the
    result is a scaled identity (both sides identity)."""
    if branch is None:
        if inner is None:
            return None
        if inner.c_in != inner.c_out:
            raise ValueError(f"residual needs c_in == c_out, {inner.describe()}")
        if inner.kind == "conv":
            add_identity(inner.proxy())
        return inner
    if inner is None:
        return residual_geom(branch, None, channels)
    if (inner.c_in, inner.c_out) != (branch.c_in, branch.c_out) or inner.kind != branch.kind:
        raise ValueError(f"parallel branches differ: {inner.describe()} vs {branch.describe()}")
    if inner.kind == "dense":
        return inner
    s = add_parallel(inner.proxy(), branch.proxy())
    return Geom("conv", inner.c_in, inner.c_out, gcd(inner.group, branch.group), s.kernel_shape,
                tuple(s.strides), tuple(s.dilations), tuple(s.pads))


__all__ = ["Geom", "compose_geom", "residual_geom"]
