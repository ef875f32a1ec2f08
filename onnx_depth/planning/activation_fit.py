"""Fit the per-channel affine stand-in of every removable activation on calibration data.

For each activation at a chain junction (`segments.JunctionActivation`), one streaming pass of
the reference model (the lossless graph the candidates were found on: same tensor names) over
the calibration set records its input x and output y, and `analysis.activation_affine.AffineFit`
solves, per channel c (axis 1 for conv chains, the last axis for dense chains),

    (a_c, b_c) = argmin sum_n (a_c x_nc + b_c - act(x_nc))^2.

The result goes into `Candidates.activation_maps` (activation output tensor -> (a, b)), where
`planning.realize.option_operator` reads it: a removed activation becomes that affine map merged
into its neighbouring layers (the refit of the merged operator then starts from this map).
`nmse` per activation says how affine it is on the data (0: exactly affine).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..analysis.activation_affine import AffineFit, default_affine
from ..analysis.stats import stream_tensors, with_outputs
from .segments import Candidates


def fit_activation_maps(cands: Candidates, reference: onnx.ModelProto, cal, *,
                        threads: int | None = None) -> dict[str, float]:
    """Fill `cands.activation_maps` from `cal`; returns {activation output: affine NMSE}.
    A second call with the same calibration object does nothing."""
    if cands.activation_source is cal:
        return dict(cands.activation_nmse)
    acts = {}
    for c in cands.chains:
        for a in c.acts[1:c.L]:  # the activation after the last layer is never removed
            if a is None:
                continue
            shape = cands.graph.static_shape(a.x)
            if not shape:
                continue
            axis = 1 if c.kind == "conv" else len(shape) - 1
            acts[a.y] = (a, AffineFit(int(shape[axis]), axis))
    nmse: dict[str, float] = {}
    if acts:
        tensors = sorted({t for a, _ in acts.values() for t in (a.x, a.y)})
        model = with_outputs(reference, tensors)
        for _, (out,) in stream_tensors([(model, tensors)], cal, threads=threads):
            for a, fit in acts.values():
                fit.add(out[a.x], out[a.y])
        for y, (a, fit) in acts.items():
            slope, _ = default_affine(a.site, fit.channels, a.op_type)
            try:
                sa, sb, err = fit.solve(slope)
            except ValueError:
                continue
            cands.activation_maps[y] = (sa, sb)
            nmse[y] = err
    cands.activation_source = cal
    cands.activation_nmse = nmse
    return nmse


__all__ = ["fit_activation_maps"]
