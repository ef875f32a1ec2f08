"""analysis.calibration.split_fit_validation with `groups`: whole sources (photos) are held back,
never split between the fit and the validation part, even when stored interleaved."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_depth import zoo
from onnx_depth.analysis.calibration import from_arrays, split_fit_validation
from onnx_depth.errors import InputError


def _data(n: int = 96):
    m = zoo.build("ffn_stack", seq=4, d_model=8, d_ff=16, blocks=1)
    x = np.arange(n * 4 * 8, dtype=np.float32).reshape(n, 4, 8)
    return m, x


@pytest.mark.parametrize("interleaved", [False, True])
def test_groups_are_held_back_whole(interleaved):
    m, x = _data()
    groups = (np.arange(96) % 12) if interleaved else np.repeat(np.arange(12), 8)
    s = split_fit_validation(from_arrays(x, m), groups=groups, seed=1)
    row_of = {float(v): i for i, v in enumerate(x[:, 0, 0])}
    fit = [row_of[float(v)] for v in s.fit.arrays()["input"][:, 0, 0]]
    val = [row_of[float(v)] for v in s.validation.arrays()["input"][:, 0, 0]]
    assert s.held_out and sorted(fit + val) == list(range(96))
    gf, gv = set(groups[fit]), set(groups[val])
    assert not gf & gv and len(gv) == 3 and len(val) == 24  # a quarter: 3 of 12 groups of 8
    assert "3 of 12 groups" in s.how
    again = split_fit_validation(from_arrays(x, m), groups=groups, seed=1)
    np.testing.assert_array_equal(again.validation.arrays()["input"], s.validation.arrays()["input"])  # seeded
    other = split_fit_validation(from_arrays(x, m), groups=groups, seed=2)
    assert set(groups[[row_of[float(v)] for v in other.validation.arrays()["input"][:, 0, 0]]]) != gv


def test_groups_count_must_match_and_one_group_is_not_split():
    m, x = _data()
    with pytest.raises(InputError, match="group labels"):
        split_fit_validation(from_arrays(x, m), groups=np.zeros(95))
    one = split_fit_validation(from_arrays(x, m), groups=np.zeros(96))
    assert not one.held_out  # one source: nothing can be held back without splitting it
