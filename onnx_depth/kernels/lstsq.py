"""Least squares for a linear operator (a conv or a dense layer) fitted on data: pure numpy.

An operator with weights W maps input rows x (im2col patches of the input for a conv, per group;
the last axis for dense) to output rows y. With a bias column (x~ = [x, 1]) and weights
W [G, d+1, O_g] (G independent groups), every statistic of the fit is in the streamed
*normal equations*, accumulated batch by batch in float64 (memory: one chunk of rows):

    A = sum x~^T x~   [G, d+1, d+1],   B = sum x~^T y   [G, d+1, O_g],   yy = sum y^2

    |X~ W - Y|^2 = tr(W^T A W) - 2 tr(W^T B) + yy          (the error of any W, no data pass)

Estimators (all in `NormalEquations`; `select` picks one on held-out rows):

* naive: W0, the exact composition of the original weights (activations removed);
* scale + bias correction: per output channel c, y_c ~ a_c z_c + b_c with z = X~ W0 (two unknowns
  per channel, from s_zz = w0^T A w0, s_zy = w0^T B_c, s_z = (A w0)[bias], n = A[bias, bias],
  s_y = B[bias, c]); W_sb = a W0 + b e_bias;
* ridge toward a prior P (here W_sb, i.e. shrinkage toward the exact composition, not toward 0):

      W(lam) = argmin |X~ W - Y|^2 + lam |W - P|^2 = (A + lam I)^{-1} (B + lam P),
      lam = ridge * mean(diag A)   (relative, so the grid does not depend on the data's scale).

`select(fit, val, W0, ridges)` evaluates naive, scale+bias and W(lam) for every ridge on the
validation normal equations (rows the fit never saw) and returns the one of least validation
error: with few samples the strong ridges win (the operator stays near W0), with many the weak
ones. An exactly linear segment is recovered exactly (W = W0 when Y = X~ W0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .conv_spec import ConvSpec

__all__ = ["NormalEquations", "OperatorFit", "RIDGES", "Selection", "conv_rows", "conv_to_w", "im2col",
           "sampled_conv_rows", "select", "w_to_conv"]

PATCH_BYTES = 64 << 20  # im2col patches held at once (float32)
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class NormalEquations:
    """Accumulated normal equations for G independent groups (features + bias column)."""

    A: np.ndarray  # [G, d+1, d+1]
    B: np.ndarray  # [G, d+1, O_g]
    yy: np.ndarray  # [G, O_g] sum of y^2
    y_sum: np.ndarray  # [G, O_g]
    rows: int = 0

    @classmethod
    def zeros(cls, G: int, d: int, o: int) -> "NormalEquations":
        return cls(np.zeros((G, d + 1, d + 1)), np.zeros((G, d + 1, o)), np.zeros((G, o)), np.zeros((G, o)))

    def add(self, X: np.ndarray, Y: np.ndarray, chunk: int | None = None) -> None:
        """X [G, R, d], Y [G, R, O_g]; float64 copies of at most ~PATCH_BYTES/2 at a time."""
        G, R, d = X.shape
        if chunk is None:
            chunk = max(256, (PATCH_BYTES // 2) // max(1, G * (d + 1) * 8))
        for a in range(0, R, chunk):
            xb = X[:, a:a + chunk].astype(np.float64)
            yb = Y[:, a:a + chunk].astype(np.float64)
            xb = np.concatenate([xb, np.ones((G, xb.shape[1], 1))], axis=2)
            xt = xb.transpose(0, 2, 1)
            self.A += np.matmul(xt, xb)
            self.B += np.matmul(xt, yb)
            self.yy += np.einsum("gro,gro->go", yb, yb)
            self.y_sum += yb.sum(1)
        self.rows += R

    def solve(self, prior: np.ndarray, ridge: float) -> np.ndarray:
        """W [G, d+1, O_g] minimising |XW - Y|^2 + lam |W - prior|^2, lam = ridge * mean diag A."""
        G, d1, _ = self.A.shape
        out = np.empty_like(prior)
        for g in range(G):
            A = self.A[g]
            lam = ridge * max(float(np.mean(np.diag(A))), 1e-12)
            M = A + lam * np.eye(d1)
            rhs = self.B[g] + lam * prior[g]
            try:
                out[g] = np.linalg.solve(M, rhs)
            except np.linalg.LinAlgError:
                out[g] = np.linalg.lstsq(M, rhs, rcond=None)[0]
        return out

    def scale_bias(self, W0: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
        """W0 with a per-output-channel gain a and offset b fitted (y_c ~ a z_c + b, z = X~ W0);
        a tiny ridge pulls (a, b) toward (1, 0) when a channel is constant."""
        AW = np.matmul(self.A, W0)                     # [G, d+1, O]
        s_zz = np.einsum("gio,gio->go", W0, AW)
        s_zy = np.einsum("gio,gio->go", W0, self.B)
        s_z = AW[:, -1, :]
        n = self.A[:, -1, -1][:, None] * np.ones_like(s_z)
        s_y = self.B[:, -1, :]
        lam = ridge * np.maximum(s_zz, 1e-12)
        # [[s_zz + lam, s_z], [s_z, n + lam']] [a, b] = [s_zy + lam, s_y]
        a11, a12, a22 = s_zz + lam, s_z, n + ridge * np.maximum(n, 1.0)
        r1, r2 = s_zy + lam, s_y
        det = a11 * a22 - a12 * a12
        ok = np.abs(det) > 1e-12 * np.maximum(a11 * a22, 1e-300)
        a = np.where(ok, (r1 * a22 - a12 * r2) / np.where(ok, det, 1.0), 1.0)
        b = np.where(ok, (a11 * r2 - a12 * r1) / np.where(ok, det, 1.0), 0.0)
        W = W0 * a[:, None, :]
        W[:, -1, :] += b
        return W

    def sq_err(self, W: np.ndarray) -> float:
        """sum |X~W - Y|^2 from the normal equations."""
        e = float(np.sum(W * np.matmul(self.A, W))) - 2 * float(np.sum(W * self.B)) + float(self.yy.sum())
        return max(float(e), 0.0)

    def sq_ref(self) -> float:
        return float(self.yy.sum())

    def nmse(self, W: np.ndarray) -> float:
        ref = self.sq_ref()
        return self.sq_err(W) / ref if ref > 0 else 0.0


@dataclass
class Selection:
    """The estimator `select` chose, and every candidate's validation NMSE."""

    W: np.ndarray
    choice: str
    val_nmse: dict[str, float] = field(default_factory=dict)


def select(fit: NormalEquations, val: "NormalEquations | None", W0: np.ndarray,
           ridges=RIDGES, default_ridge: float = 1e-3) -> Selection:
    """The estimator of least validation error among naive, scale+bias and ridge-toward-scale+bias
    for each of `ridges` (module docstring). Without validation rows: ridge `default_ridge`
    toward W0 (the fit-only estimator, no choice possible)."""
    if val is None or val.rows == 0:
        return Selection(fit.solve(W0, default_ridge), f"ridge {default_ridge:g} (no validation rows)")
    sb = fit.scale_bias(W0)
    cands = {"naive": W0, "scale+bias": sb}
    for r in ridges:
        cands[f"ridge {r:g}"] = fit.solve(sb, r)
    errs = {k: val.nmse(w) for k, w in cands.items()}
    best = min(errs, key=lambda k: (errs[k], k != "naive"))
    return Selection(cands[best], best, errs)


# ------------------------------------------------------------------------------- conv rows
def _windows(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """A view [N, C, Ho, Wo, kh, kw] of the padded input's receptive fields (no copy)."""
    pt, pl, pb, pr = spec.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = spec.kernel_shape
    dh, dw = spec.dilations
    sh, sw = spec.strides
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    return sliding_window_view(xp, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]


def im2col(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """[N, C, H, W] -> [g, N*Ho*Wo, C/g*kh*kw] with the spec's pads/stride/dilation."""
    win = _windows(x, spec)
    N, C, Ho, Wo = win.shape[:4]
    kh, kw = spec.kernel_shape
    g = spec.group
    win = win.reshape(N, g, C // g, Ho, Wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return win.reshape(g, N * Ho * Wo, (C // g) * kh * kw)


def conv_rows(spec: ConvSpec, x: np.ndarray, y: np.ndarray):
    """(X [g, R, d], Y [g, R, O_g]) chunks of the regression of conv `spec` from x to y over
    every output position (im2col a few samples at a time, at most PATCH_BYTES of patches)."""
    g = spec.group
    N, O, Ho, Wo = y.shape
    d = spec.weight.shape[1] * int(np.prod(spec.kernel_shape))
    step = max(1, PATCH_BYTES // max(1, Ho * Wo * d * 4 * g))
    for a in range(0, N, step):
        xa, ya = x[a:a + step], y[a:a + step]
        n = xa.shape[0]
        X = im2col(xa, spec)
        if X.shape[1] != n * Ho * Wo:
            raise ValueError(f"merged conv output {X.shape[1] // max(n, 1)} positions, original {Ho * Wo}")
        Yr = ya.reshape(n, g, O // g, Ho, Wo).transpose(1, 0, 3, 4, 2).reshape(g, n * Ho * Wo, O // g)
        yield X, Yr


def sampled_conv_rows(spec: ConvSpec, x: np.ndarray, y: np.ndarray, rows: int, rng: np.random.Generator):
    """`rows` random (sample, output position) rows of the im2col regression, gathered directly."""
    win = _windows(x, spec)
    N, C, Ho, Wo = win.shape[:4]
    kh, kw = spec.kernel_shape
    if (Ho, Wo) != tuple(y.shape[2:]):
        raise ValueError(f"merged conv output {Ho}x{Wo} positions, original {y.shape[2]}x{y.shape[3]}")
    flat = np.sort(rng.choice(N * Ho * Wo, min(rows, N * Ho * Wo), replace=False))
    n_i, rest = np.divmod(flat, Ho * Wo)
    oy, ox = np.divmod(rest, Wo)
    g = spec.group
    P = win[n_i, :, oy, ox]  # [R, C, kh, kw]
    R = P.shape[0]
    X = P.reshape(R, g, (C // g) * kh * kw).transpose(1, 0, 2)
    O = y.shape[1]
    Yr = y[n_i, :, oy, ox].reshape(R, g, O // g).transpose(1, 0, 2)
    return np.ascontiguousarray(X), np.ascontiguousarray(Yr)


def conv_to_w(spec: ConvSpec) -> np.ndarray:
    """ConvSpec -> [G, d+1, O_g] regression weights (bias last)."""
    g = spec.group
    O = spec.out_channels
    w = np.asarray(spec.weight, np.float64).reshape(g, O // g, -1)  # [g, O_g, d]
    b = spec.bias_or_zeros().reshape(g, O // g, 1)
    return np.concatenate([w, b], axis=2).transpose(0, 2, 1)


def w_to_conv(W: np.ndarray, like: ConvSpec) -> ConvSpec:
    g, d1, og = W.shape
    w = W[:, :-1, :].transpose(0, 2, 1).reshape(g * og, *like.weight.shape[1:])
    b = W[:, -1, :].reshape(-1)
    return ConvSpec(w.astype(np.float32), b.astype(np.float32), like.strides, like.dilations, like.pads, like.group)


# ------------------------------------------------------------------------------- one operator
@dataclass
class OperatorFit:
    """Least-squares state for one operator (a ConvSpec or a dense (W [n_in, n_out], b)) that
    should map tensor x to tensor y: feed fit batches with `add` and held-out batches with
    `add_validation`, then `solve` (the naive W0 is the operator given). max_rows: keep about that
    many random rows of each batch (None: every row, i.e. every spatial position)."""

    op: object
    max_rows: int | None = None
    normal: NormalEquations | None = None
    val: NormalEquations | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    @property
    def features(self) -> int:
        if isinstance(self.op, ConvSpec):
            return int(self.op.weight.shape[1] * np.prod(self.op.kernel_shape))
        return int(self.op[0].shape[0])

    def _rows(self, x: np.ndarray, y: np.ndarray):
        if isinstance(self.op, ConvSpec):
            if self.max_rows is not None and x.shape[0] * y.shape[2] * y.shape[3] > self.max_rows:
                yield sampled_conv_rows(self.op, x, y, self.max_rows, self._rng)
            else:
                yield from conv_rows(self.op, x, y)
            return
        X = x.reshape(-1, x.shape[-1])
        Y = y.reshape(-1, y.shape[-1])
        if self.max_rows is not None and X.shape[0] > self.max_rows:
            idx = np.sort(self._rng.choice(X.shape[0], self.max_rows, replace=False))
            X, Y = X[idx], Y[idx]
        yield X[None], Y[None]

    def _add(self, which: str, x: np.ndarray, y: np.ndarray) -> None:
        # rows are buffered until there are at least d+1 of them (or PATCH_BYTES/4): a rank-R
        # update of the [d+1, d+1] normal matrix with R << d is bound by memory, not arithmetic
        # (a few sampled rows per calibration sample made the fits 3-12x slower); same sums
        pend = self._pending.setdefault(which, [])
        rows = sum(p[0].shape[1] for p in pend)
        for X, Y in self._rows(x, y):
            pend.append((X, Y))
            rows += X.shape[1]
            if rows > X.shape[2] or rows * X.shape[0] * (X.shape[2] + Y.shape[2]) * 4 >= PATCH_BYTES // 4:
                self._flush(which)
                pend, rows = self._pending.setdefault(which, []), 0

    def _flush(self, which: str) -> None:
        pend = self._pending.pop(which, None)
        if not pend:
            return
        X = pend[0][0] if len(pend) == 1 else np.concatenate([p[0] for p in pend], axis=1)
        Y = pend[0][1] if len(pend) == 1 else np.concatenate([p[1] for p in pend], axis=1)
        ne = getattr(self, which)
        if ne is None:
            ne = NormalEquations.zeros(X.shape[0], X.shape[2], Y.shape[2])
            setattr(self, which, ne)
        ne.add(X, Y)

    def flush(self) -> None:
        """Add the buffered rows to `normal` / `val` (done by solve and solve_selected)."""
        for which in list(self._pending):
            self._flush(which)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self._add("normal", x, y)

    def add_validation(self, x: np.ndarray, y: np.ndarray) -> None:
        self._add("val", x, y)

    def w0(self) -> np.ndarray:
        if isinstance(self.op, ConvSpec):
            return conv_to_w(self.op)
        W, b = self.op
        b = np.zeros(W.shape[1]) if b is None else b
        return np.concatenate([np.asarray(W, np.float64), np.asarray(b, np.float64)[None, :]], 0)[None]

    def to_op(self, W: np.ndarray):
        if isinstance(self.op, ConvSpec):
            return w_to_conv(W, self.op)
        return (W[0, :-1].astype(np.float32), W[0, -1].astype(np.float32))

    def solve(self, ridge: float = 1e-3):
        """(fitted operator, NMSE of the naive operator, NMSE of the fit) on the fit rows, with a
        fixed ridge toward W0 (no validation)."""
        self.flush()
        if self.normal is None:
            raise ValueError("no calibration rows were added")
        W0 = self.w0()
        W = self.normal.solve(W0, ridge)
        return self.to_op(W), self.normal.nmse(W0), self.normal.nmse(W)

    def solve_selected(self, ridges=RIDGES, default_ridge: float = 1e-3):
        """(fitted operator, Selection): the estimator of least validation error (`select`)."""
        self.flush()
        if self.normal is None:
            raise ValueError("no calibration rows were added")
        sel = select(self.normal, self.val, self.w0(), ridges, default_ridge)
        return self.to_op(sel.W), sel
