"""Per-channel affine stand-ins for activations: act_c(x) ~ a_c x + b_c.

Removing an activation between two linear layers replaces it by an affine map per channel,
which then merges into the layers (LayerCollapse / TLC linearization, generalized to every
activation kind).

On calibration data (`AffineFit`) a_c, b_c minimise sum_n (a_c x_nc + b_c - act(x_nc))^2 over
the samples n of channel c:

    a_c = cov(x_c, y_c) / var(x_c),    b_c = mean(y_c) - a_c mean(x_c)

(accumulated as sums of x, y, x^2, x y in float64; a channel with var(x_c) = 0 gets a_c = the
data-free slope, b_c = mean(y_c) - a_c mean(x_c)). `nmse` reports how affine the activation is
on the data: sum (a x + b - y)^2 / sum (y - mean y)^2 per site.

Without data (`default_affine`), documented choice per kind:

* ReLU-like kinds (relu, clip, leaky_relu, prelu, elu, gelu, silu, hardswish): the identity
  (their ON region, x large and positive) - the same linearization the planner always used for
  Relu (LayerMerge), so a data-free plan is unchanged for those kinds;
* hardsigmoid: its middle piece alpha x + beta;
* sigmoid: the tangent at 0, x/4 + 1/2; tanh: the tangent at 0, x;
* a pre-bias (com.microsoft BiasGelu / FastGelu with a bias input, act(x + bias)) is added:
  identity on x + bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IDENTITY_KINDS = ("relu", "clip", "leaky_relu", "prelu", "elu", "gelu", "silu", "hardswish")


def default_affine(site, channels: int, op_type: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of `channels` values: the data-free stand-in of the activation (module docstring).
    site: an analysis.activations.ActivationSite, or None (a single-node Relu-family op)."""
    kind = None if site is None else site.kind
    a, b = np.ones(channels), np.zeros(channels)
    if kind == "hardsigmoid":
        a[:], b[:] = float(site.params["alpha"]), float(site.params["beta"])
    elif kind == "sigmoid":
        a[:], b[:] = 0.25, 0.5
    elif kind in IDENTITY_KINDS or kind in (None, "tanh"):
        pass
    else:
        raise ValueError(f"no affine stand-in for activation kind {kind!r} ({op_type})")
    bias = None if site is None else site.params.get("bias")
    if bias is not None:
        b = b + a * np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (channels,))
    return a, b


@dataclass
class AffineFit:
    """Streaming least-squares fit of y_c ~ a_c x_c + b_c per channel (module docstring)."""

    channels: int
    axis: int  # channel axis of the tensors added
    n: np.ndarray = field(init=False)
    sx: np.ndarray = field(init=False)
    sy: np.ndarray = field(init=False)
    sxx: np.ndarray = field(init=False)
    sxy: np.ndarray = field(init=False)
    syy: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        z = lambda: np.zeros(self.channels)  # noqa: E731
        self.n, self.sx, self.sy, self.sxx, self.sxy, self.syy = z(), z(), z(), z(), z(), z()

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.moveaxis(np.asarray(x, np.float64), self.axis, -1).reshape(-1, self.channels)
        y = np.moveaxis(np.asarray(y, np.float64), self.axis, -1).reshape(-1, self.channels)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += np.einsum("ij,ij->j", x, x)
        self.sxy += np.einsum("ij,ij->j", x, y)
        self.syy += np.einsum("ij,ij->j", y, y)

    def solve(self, default_slope: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
        """(a, b, nmse of the affine map on the data seen)."""
        if not np.all(self.n > 0):
            raise ValueError("no samples were added")
        n = self.n
        mx, my = self.sx / n, self.sy / n
        vx = self.sxx / n - mx * mx
        cxy = self.sxy / n - mx * my
        vy = np.maximum(self.syy / n - my * my, 0.0)
        ok = vx > 1e-12 * np.maximum(self.sxx / n, 1e-30)
        a = np.where(ok, cxy / np.where(ok, vx, 1.0), np.broadcast_to(default_slope, mx.shape))
        b = my - a * mx
        # residual sum of squares: E(y - a x - b)^2 = vy - 2 a cxy + a^2 vx
        rss = np.maximum(vy - 2 * a * cxy + a * a * vx, 0.0)
        tot = float(vy.sum())
        return a, b, float(rss.sum() / tot) if tot > 0 else 0.0


__all__ = ["AffineFit", "IDENTITY_KINDS", "default_affine"]
