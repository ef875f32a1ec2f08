"""Per-channel linearity decisions: which channels of an activation are always ON (identity),
always OFF (zero / the lower constant), saturated (the upper constant), in the negative-slope
region of a Leaky/PReLU (NEG), on another affine piece (LIN), or MIXED.

Three criteria, each returning a ``Decision`` with per-region fractions (or probabilities) per
channel; a channel's state is the region holding at least ``1 - tol`` of its values, provided the
activation is affine there, else MIXED:

1. ``layercollapse`` (arXiv 2311.17943), PRelu/LeakyRelu: a channel with |alpha_c - 1| <= tau
   is ON (identity). Y = W2 PReLU_a(W1 x + b1) + b2 linearized has |Y_lin - Y_a|^2 <= C (1-a)^2,
   C = s_max(W2 W1)^2 |x|^2 + |W2 b1|^2; the decision reports this bound next to the measured
   error when statistics are given: E|(1-a) min(h, 0)|^2 at the activation output, and
   s_max(W2)^2 times that at the next layer's output.
2. ``tlc`` (arXiv 2412.15077), data-free: when a BatchNormalization directly precedes the
   activation, its output is modelled as N(beta_c, gamma_c^2): P(x <= lo) = Phi((lo - beta)/|gamma|),
   P(x >= hi) = 1 - Phi((hi - beta)/|gamma|) (Relu: P_OFF = Phi(-beta/|gamma|)); gamma == 0 gives
   the exact 0/1 answer [beta <= lo] / [beta >= hi].
3. ``calibration``: the measured fractions from ``stats.collect_stats``.

``Decision.exact`` marks channels whose state is proven (slope exactly 1, gamma == 0 BN, a
producer whose weights are all zero): rewrites of exact channels change no output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from math import erfc as _erfc, sqrt as _sqrt

_erfc_vec = np.vectorize(_erfc, otypes=[np.float64])


def ndtr(x):
    """Standard normal CDF Phi(x) (numpy only; no scipy dependency)."""
    return 0.5 * _erfc_vec(-np.asarray(x, dtype=np.float64) / _sqrt(2.0))  # erfc: accurate in the tails

from ..ir import Graph
from ..ir.patterns import is_op
from ..kernels import to_dense
from .layer_unit import read_bn, read_conv, read_dense
from .activations import REGIONS, ActivationSite
from .stats import TensorStats

__all__ = [
    "Decision",
    "calibration_criterion",
    "tlc_criterion",
    "layercollapse_criterion",
    "exact_criterion",
    "decide",
    "constant_channels",
    "STATES",
    "DEFAULT_TAU",
]

STATES = ("ON", "OFF", "SAT", "NEG", "LIN", "MIXED")
DEFAULT_TAU = 0.05


@dataclass
class Decision:
    """Per-channel decision for one activation site."""

    site: str
    kind: str
    criterion: str
    tol: float
    state: np.ndarray  # [C] of STATES
    fractions: dict[str, np.ndarray]  # region -> [C] fraction or probability
    exact: np.ndarray  # [C] bool: the state is proven, not estimated
    info: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.state.size)

    def counts(self) -> dict[str, int]:
        return {s: int(np.count_nonzero(self.state == s)) for s in STATES}

    @property
    def all_linear(self) -> bool:
        return bool(np.all(self.state != "MIXED"))

    @property
    def linear_channels(self) -> int:
        return int(np.count_nonzero(self.state != "MIXED"))

    def region_of(self, site: ActivationSite, *, force: bool = False) -> np.ndarray:
        """Per channel, the region whose affine map replaces the activation. MIXED channels
        raise unless `force`: then the region (with an affine map) holding most of the values."""
        out = np.empty(self.channels, dtype=object)
        label_to_region = {}
        for r in REGIONS:
            label_to_region.setdefault(site.region_label(r), r)
        mapped = [r for r in REGIONS if site.region_map(r) is not None]
        for c in range(self.channels):
            st = self.state[c]
            if st == "MIXED":
                if not force:
                    raise ValueError(f"{site.label}: channel {c} is MIXED")
                out[c] = max(mapped, key=lambda r: self.fractions[r][c])
            else:
                out[c] = _region_for_state(site, st)
        return out

    def affine(self, site: ActivationSite, *, force: bool = False, identity_mixed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(s, t) per channel: the activation replaced by y = s_c x + t_c.

        force: MIXED channels take their dominant affine region; identity_mixed: MIXED channels
        become the identity instead (LayerCollapse-style)."""
        C = self.channels
        s = np.ones(C)
        t = np.zeros(C)
        regions = self.region_of(site, force=True) if (force or identity_mixed) else self.region_of(site)
        for c in range(C):
            if identity_mixed and self.state[c] == "MIXED":
                continue
            m = site.region_map(regions[c])
            sc, tc = m
            s[c] = site.channel_vector(sc, C)[c]
            t[c] = site.channel_vector(tc, C)[c]
        return s, t

    def subset(self, keep: np.ndarray) -> "Decision":
        """The decision restricted to channels `keep` (after width pruning)."""
        keep = np.asarray(keep)
        info = {k: (v[keep] if isinstance(v, np.ndarray) and v.shape[:1] == (self.channels,) else v) for k, v in self.info.items()}
        return Decision(self.site, self.kind, self.criterion, self.tol, self.state[keep], {r: f[keep] for r, f in self.fractions.items()}, self.exact[keep], info)

    def to_dict(self) -> dict:
        return {
            "site": self.site,
            "kind": self.kind,
            "criterion": self.criterion,
            "tol": self.tol,
            "channels": self.channels,
            "counts": self.counts(),
            "exact_channels": int(np.count_nonzero(self.exact)),
            "info": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.info.items()},
        }


def _region_for_state(site: ActivationSite, state: str) -> str:
    for r in REGIONS:
        if site.region_label(r) == state and site.region_map(r) is not None:
            return r
    raise ValueError(f"{site.label}: no region with state {state}")


def _states(site: ActivationSite, fractions: dict[str, np.ndarray], tol: float) -> np.ndarray:
    C = fractions["below"].size
    state = np.full(C, "MIXED", dtype=object)
    for r in REGIONS:
        lab = site.region_label(r)
        if lab == "NL":
            continue
        if r == "above" and not math.isfinite(site.hi):
            continue
        if r == "below" and not math.isfinite(site.lo):
            continue
        ok = (fractions[r] >= 1.0 - tol) & (state == "MIXED")
        state[ok] = lab
    return state.astype("<U5")


# ------------------------------------------------------------------------------- criteria
def calibration_criterion(site: ActivationSite, stats: TensorStats, tol: float = 0.0) -> Decision:
    """Measured fractions on the calibration data."""
    f = stats.fractions()
    state = _states(site, f, tol)
    n = np.maximum(stats.count, 1)
    info = {
        "samples": stats.samples,
        # squared error per value of replacing the activation by the identity on each channel
        "mse_identity": _identity_sq_err(site, stats) / n,
    }
    return Decision(site.name, site.kind, "calibration", tol, state, f, np.zeros(state.size, bool), info)


def _identity_sq_err(site: ActivationSite, stats: TensorStats) -> np.ndarray:
    C = stats.channels
    if site.kind in ("relu",):
        return stats.sq_below.copy()
    if site.kind == "clip":
        return stats.sq_below + stats.sq_above
    if site.kind in ("leaky_relu", "prelu"):
        a = site.channel_vector(site.params["alpha"], C)
        return (1.0 - a) ** 2 * stats.sq_below
    return np.full(C, np.nan)


def _bn_before(graph: Graph, site: ActivationSite):
    p = graph.producer(site.input)
    if not is_op(p, "BatchNormalization"):
        return None, f"{site.label}: no BatchNormalization directly before the activation"
    bn, why = read_bn(graph, p)
    if bn is None:
        return None, why
    return bn, None


def tlc_criterion(graph: Graph, site: ActivationSite, tol: float = 0.0) -> tuple[Decision | None, str | None]:
    """TLC's data-free criterion from the BN before the activation; (None, reason) without one."""
    bn, why = _bn_before(graph, site)
    if bn is None:
        return None, why
    if not site.has_regions:
        return None, f"{site.label}: {site.op} has no linear regions"
    gamma, beta = bn.scale, bn.bias
    g = np.abs(gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(g > 0, ndtr((site.lo - beta) / np.where(g > 0, g, 1)), (beta <= site.lo).astype(float)) if math.isfinite(site.lo) else np.zeros_like(beta)
        above = np.where(g > 0, 1.0 - ndtr((site.hi - beta) / np.where(g > 0, g, 1)), (beta >= site.hi).astype(float)) if math.isfinite(site.hi) else np.zeros_like(beta)
    f = {"below": below, "mid": np.clip(1 - below - above, 0, 1), "above": above}
    state = _states(site, f, tol)
    exact = (g == 0) & (state != "MIXED")
    info = {"gamma": gamma, "beta": beta, "p_off": below}
    return Decision(site.name, site.kind, "tlc", tol, state, f, exact, info), None


def _neighbours(graph: Graph, site: ActivationSite):
    """(W1 as a matrix [H, I], b1 [H], W2 [O, H]) of the linear layers around the site, or None.

    Convs are taken per tap: W1 reshaped [H, I*k*k], W2 summed over its taps [O, H] (exact for
    1x1, a proxy otherwise)."""
    p = graph.producer(site.input)
    W1 = b1 = W2 = None
    if is_op(p, "Conv"):
        spec, _ = read_conv(graph, p, exclusive=False)
        if spec is not None:
            d = to_dense(spec)
            W1 = np.asarray(d.weight, np.float64).reshape(d.weight.shape[0], -1)
            b1 = d.bias_or_zeros()
    elif is_op(p, "Gemm", "MatMul"):
        d, _ = read_dense(graph, p, exclusive=False)
        if d is not None:
            W1, b1 = d.W.T, (np.zeros(d.W.shape[1]) if d.b is None else d.b)
    cons = graph.consumers(site.output)
    mats = []
    for c in cons:
        if is_op(c, "Conv") and c.inputs[0] == site.output:
            spec, _ = read_conv(graph, c, exclusive=False)
            if spec is not None:
                d = to_dense(spec)
                mats.append(np.asarray(d.weight, np.float64).reshape(d.weight.shape[0], d.weight.shape[1], -1).sum(-1))
        elif is_op(c, "Gemm", "MatMul") and c.inputs[0] == site.output:
            d, _ = read_dense(graph, c, exclusive=False)
            if d is not None:
                mats.append(d.W.T)
    if mats and all(m.shape[1] == mats[0].shape[1] for m in mats):
        W2 = np.concatenate(mats, 0)
    return W1, b1, W2


def layercollapse_criterion(
    graph: Graph,
    site: ActivationSite,
    tau: float = DEFAULT_TAU,
    stats: TensorStats | None = None,
    input_stats: TensorStats | None = None,
) -> tuple[Decision | None, str | None]:
    """LayerCollapse's slope criterion for PRelu / LeakyRelu (see module docstring).

    stats: statistics of the activation input (for the measured error); input_stats: of the
    previous linear layer's input (for |x|^2 in the bound; without it C is per unit |x|^2)."""
    if site.kind not in ("prelu", "leaky_relu"):
        return None, f"{site.label}: LayerCollapse applies to PRelu/LeakyRelu, not {site.op}"
    C = site.channels or (stats.channels if stats is not None else None)
    if C is None:
        a = np.asarray(site.params["alpha"], np.float64).reshape(-1)
        C = a.size
    a = site.channel_vector(site.params["alpha"], C)
    on = np.abs(a - 1.0) <= tau
    state = np.where(on, "ON", "MIXED").astype("<U5")
    f = {"below": np.zeros(C), "mid": on.astype(float), "above": np.zeros(C)}
    info: dict = {"tau": tau, "max_abs_1_minus_alpha": float(np.max(np.abs(1 - a))) if C else 0.0}
    W1, b1, W2 = _neighbours(graph, site)
    one_minus = float(np.max(np.abs(1 - a[on]))) if np.any(on) else float(np.max(np.abs(1 - a)))
    if W1 is not None and W2 is not None and W2.shape[1] == W1.shape[0]:
        W = W2 @ W1
        smax = float(np.linalg.norm(W, 2))
        x2 = input_stats.mean_sq_norm() if input_stats is not None else 1.0
        Cb = smax**2 * x2 + float(np.sum((W2 @ b1) ** 2))
        info.update({"C": Cb, "bound": Cb * one_minus**2, "bound_per_unit_x2": input_stats is None})
        smax2 = float(np.linalg.norm(W2, 2))
    else:
        smax2 = None
        info["bound"] = None
    if stats is not None:
        err_c = (1 - a) ** 2 * stats.sq_below / max(stats.samples, 1)
        act_err = float(np.sum(err_c[on])) if np.any(on) else 0.0
        info["measured_act_err"] = act_err  # E|Y_act_lin - Y_act|^2 per sample (ON channels linearized)
        info["measured_act_err_all"] = float(np.sum(err_c))  # every channel linearized (LayerCollapse)
        info["measured_out_err_bound"] = None if smax2 is None else smax2**2 * act_err
    exact = (a == 1.0)
    return Decision(site.name, site.kind, "layercollapse", tau, state, f, exact, info), None


def exact_criterion(graph: Graph, site: ActivationSite) -> Decision | None:
    """Data-free *proven* states: PRelu/Leaky slope exactly 1 (ON); a channel whose producer
    weights are all zero makes a constant pre-activation b_c (its region is then certain);
    a gamma == 0 BN likewise (beta_c). None when nothing is proven."""
    C = site.channels
    if site.kind in ("prelu", "leaky_relu") and C is not None:
        a = site.channel_vector(site.params["alpha"], C)
        if np.any(a == 1.0):
            state = np.where(a == 1.0, "ON", "MIXED").astype("<U5")
            f = {"below": np.zeros(C), "mid": (a == 1.0).astype(float), "above": np.zeros(C)}
            return Decision(site.name, site.kind, "exact", 0.0, state, f, a == 1.0)
    if not site.has_regions:
        return None
    const = _constant_preactivation(graph, site)
    if const is None:
        return None
    known, value = const
    C = value.size
    below = (known & (value <= site.lo)).astype(float)
    above = (known & (value >= site.hi)).astype(float)
    mid = (known & (value > site.lo) & (value < site.hi)).astype(float)
    f = {"below": below, "mid": mid, "above": above}
    state = _states(site, f, 0.0)
    state[~known] = "MIXED"
    if not np.any(state != "MIXED"):
        return None
    return Decision(site.name, site.kind, "exact", 0.0, state, f, state != "MIXED")


def _constant_preactivation(graph: Graph, site: ActivationSite):
    """(known [C], value [C]) for channels whose pre-activation is a constant."""
    p = graph.producer(site.input)
    if is_op(p, "BatchNormalization"):
        bn, _ = read_bn(graph, p)
        if bn is None:
            return None
        return bn.scale == 0, bn.bias.copy()
    if is_op(p, "Conv"):
        spec, _ = read_conv(graph, p, exclusive=False)
        if spec is None:
            return None
        w = np.asarray(spec.weight).reshape(spec.weight.shape[0], -1)
        return ~np.any(w != 0, axis=1), spec.bias_or_zeros()
    if is_op(p, "Gemm", "MatMul"):
        d, _ = read_dense(graph, p, exclusive=False)
        if d is None or d.y != site.input:
            return None
        return ~np.any(d.W != 0, axis=0), (np.zeros(d.W.shape[1]) if d.b is None else d.b.copy())
    return None


def decide(
    graph: Graph,
    site: ActivationSite,
    *,
    stats: TensorStats | None = None,
    tol: float = 0.0,
    tau: float = DEFAULT_TAU,
    prefer: tuple[str, ...] = ("calibration", "tlc", "layercollapse"),
) -> Decision | None:
    """The first criterion of `prefer` that applies, with proven (exact) states merged in."""
    dec = None
    for name in prefer:
        if name == "calibration" and stats is not None and site.has_regions:
            dec = calibration_criterion(site, stats, tol)
        elif name == "tlc":
            dec, _ = tlc_criterion(graph, site, tol)
        elif name == "layercollapse":
            dec, _ = layercollapse_criterion(graph, site, tau, stats)
        if dec is not None:
            break
    ex = exact_criterion(graph, site)
    if ex is None:
        return dec
    if dec is None or dec.channels != ex.channels:
        return ex
    m = ex.exact
    dec.state = dec.state.copy()
    dec.state[m] = ex.state[m]
    dec.exact = dec.exact | m
    return dec


def constant_channels(site: ActivationSite, decision, *, exact_only: bool = False) -> dict[int, float]:
    """{channel: constant output} for channels whose state is OFF or SAT (and NEG with slope 0)."""
    C = decision.channels
    out: dict[int, float] = {}
    for c in range(C):
        if exact_only and not decision.exact[c]:
            continue
        st = decision.state[c]
        region = {"OFF": "below", "SAT": "above"}.get(st)
        if st == "NEG":
            a = site.channel_vector(site.params["alpha"], C)[c]
            if a == 0:
                out[c] = 0.0
            continue
        if region is None:
            continue
        s, t = site.region_map(region)
        if site.channel_vector(s, C)[c] != 0:
            continue
        out[c] = float(site.channel_vector(t, C)[c])
    return out
