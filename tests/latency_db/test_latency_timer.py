"""The timer: ordering and floor sanity only (never absolute times: the machine is shared)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

from onnx_depth import runtime
from onnx_depth.latency_db.fingerprint import current
from onnx_depth.latency_db.lookup import measure
from onnx_depth.latency_db.store import LatencyStore
from onnx_depth.latency_db.timer import floor_model, interleaved_ab, time_model

SMALL = dict(c_in=16, c_out=16, hw=32)  # 2.4 M MACs
BIG = dict(c_in=50, c_out=50, hw=32)    # 23 M MACs: ~9.8x


def test_more_macs_is_slower(conv_model: Callable[..., onnx.ModelProto]) -> None:
    small = time_model(conv_model(**SMALL), threads=1, warmup=5, repeats=5)
    big = time_model(conv_model(**BIG), threads=1, warmup=5, repeats=5)
    assert big.median_ms > small.median_ms
    assert small.samples >= 5 and big.samples >= 5


def test_floor_positive_and_below_median(conv_model: Callable[..., onnx.ModelProto]) -> None:
    t = time_model(conv_model(**SMALL), threads=1, warmup=5, repeats=5, inner=20)
    assert t.samples == 100
    assert 0 < t.floor_ms <= t.median_ms
    assert t.p10_ms <= t.median_ms <= t.p90_ms * 1.5
    assert t.net_ms == pytest.approx(max(t.median_ms - t.floor_ms, 0.0))


def test_interleaved_ab_ratios(conv_model: Callable[..., onnx.ModelProto]) -> None:
    r = interleaved_ab({"small": conv_model(**SMALL), "big": conv_model(**BIG),
                        "small2": conv_model(**SMALL, seed=5)}, threads=1, warmup=5, rounds=7)
    assert r.baseline == "small" and r.ratios["small"] == 1.0
    assert r.ratios["big"] > 1.5
    assert r.timings["big"].median_ms > r.timings["small"].median_ms
    assert r.timings["small"].floor_ms == r.timings["small2"].floor_ms > 0  # one shared floor
    lo, hi = r.ratio_spread["big"]
    assert lo <= r.ratios["big"] <= hi
    assert "ratio" in r.table()


@pytest.mark.parametrize("kind", ["shape", "identity"])
def test_floor_model_runs_on_the_same_inputs(conv_model: Callable[..., onnx.ModelProto], kind: str) -> None:
    m = conv_model(**SMALL)
    f = floor_model(m, kind)
    sess = runtime.make_session(f, optimization="all", threads=1)
    feed = runtime.random_feed(runtime.input_specs(sess), np.random.default_rng(0))
    out = runtime.run(sess, feed)
    (value,) = out.values()
    if kind == "identity":
        np.testing.assert_array_equal(value, feed["x"])
    else:
        assert list(value) == [1, 16, 32, 32]


def test_bad_threads(conv_model: Callable[..., onnx.ModelProto]) -> None:
    with pytest.raises(ValueError):
        time_model(conv_model(**SMALL), threads=0)


def test_measure_caches_in_store(conv_model: Callable[..., onnx.ModelProto], tmp_path: Path) -> None:
    fp = current(threads=1)
    with LatencyStore(tmp_path / "db.sqlite") as s:
        e1 = measure(s, conv_model(**SMALL), fp, warmup=2, repeats=3)
        e2 = measure(s, conv_model(**SMALL, seed=9, names="n/"), fp, warmup=2, repeats=3)
        assert e1 == e2  # same signature: looked up, not re-timed
        assert e1.description == "Conv[3x3,s1,g1] 16->16 @32x32"
        assert s.stats()["entries"] == 1
        assert s.get(current(threads=2), next(iter(s.entries()))[1]) is None
        with pytest.raises(TypeError):
            measure(s, conv_model(**SMALL), fp, threads=2)
