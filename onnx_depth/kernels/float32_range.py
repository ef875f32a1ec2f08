"""float32_range: may a weight computed in float64 be written as float32?

Every rewrite composes its weights in float64 and writes float32, the dtype of the model. A
composed weight can leave float32's range although each factor is in it: (W1 W2)[i, j] =
sum_k W1[i, k] W2[k, j] reaches 1e39 for factors of 1e20 and 1e19, which float32 stores as inf,
while the original model, which multiplies an activation by W1 first, may stay finite on its
inputs (x ~ 1e-30: x W1 ~ 1e-10, x W1 W2 ~ 1e9). The merged model would then output inf or NaN.

A written weight is *safe* when every value is finite after the cast and its magnitude is at most
SAFE_MAX = 1e30: a float32 activation of magnitude up to 3.4e38 / 1e30 = 3.4e8 times such a weight
still does not overflow. Original layers with weights beyond SAFE_MAX are already outside what a
rewrite can keep exact, so the rewrite is refused then too (the layers stay as they are).
"""

from __future__ import annotations

import numpy as np

SAFE_MAX = 1e30


def float32_blocker(*arrays, what: str = "rewritten weights") -> str | None:
    """Why `arrays` (float64 or float32; None entries skipped) cannot be written as float32
    weights; None when they can."""
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a)
        if a.size == 0:
            continue
        if a.dtype.kind not in "fc":
            continue
        m = np.abs(a.astype(np.float64, copy=False))
        if not np.all(np.isfinite(m)) or not np.all(m <= np.finfo(np.float32).max):
            return f"{what} are not finite in float32 (NaN or overflow)"
        peak = float(m.max())
        if peak > SAFE_MAX:
            return f"{what} reach magnitude {peak:.3g}, outside float32's safe range (|w| <= {SAFE_MAX:g})"
    return None
