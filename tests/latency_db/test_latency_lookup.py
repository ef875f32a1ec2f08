"""latency_db.lookup.measure_group: several models timed interleaved, each stored."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import onnx
import pytest

from onnx_depth.latency_db import LatencyStore, current, measure_group, signature


def test_measure_group_stores_each(conv_model: Callable[..., onnx.ModelProto], tmp_path: Path) -> None:
    small = conv_model(c_in=8, c_out=8, hw=16, k=1)
    big = conv_model(c_in=32, c_out=32, hw=32, k=3)
    models = {signature(small): small, signature(big): big}
    fp = current(threads=1)
    with LatencyStore(tmp_path / "db.sqlite") as s:
        got = measure_group(s, models, fp, warmup=2, rounds=5)
        assert set(got) == set(models)
        for sig, e in got.items():
            assert s.get(fp, sig) == e and e.floor_ms is not None and e.samples >= 5
        assert got[signature(big)].median_ms > got[signature(small)].median_ms  # ordering only
        assert measure_group(s, {}, fp) == {}
        with pytest.raises(TypeError):
            measure_group(s, models, fp, threads=2)
