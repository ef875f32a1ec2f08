"""zoo.minilm: the MiniLM sentence encoder as exported (dynamic batch and sequence), sentences from
installed packages' METADATA in disjoint splits, and the FFN collapse options budget mode sees."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_depth.zoo import minilm
from onnx_depth.zoo.real import RealAssetMissing

pytestmark = pytest.mark.realmodel


def _need_model() -> None:
    try:
        minilm.model_dir()
    except RealAssetMissing as e:
        pytest.skip(str(e))
    pytest.importorskip("transformers")
    pytest.importorskip("torch")


def test_sentence_splits_are_disjoint() -> None:
    cal, ev = minilm.sentences("calibration"), minilm.sentences("evaluation")
    if len(cal) < 20 or len(ev) < 20:
        pytest.skip("too few installed packages with descriptions")
    assert not set(cal) & set(ev)
    assert all(6 <= len(s.split()) <= 40 and s[-1] in ".!?" for s in cal + ev)
    assert minilm.sentences("evaluation", 5) == ev[:5]  # a fixed order
    with pytest.raises(ValueError):
        minilm.sentences("test")


def test_mean_pool_ignores_padding() -> None:
    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(minilm.mean_pool(h, mask), [[1.0, 2.0], [6.0, 7.0]])
    np.testing.assert_allclose(minilm.cosine(h[:, 0], 2 * h[:, 0]), [1.0, 1.0])


@pytest.mark.slow
def test_export_dynamic_and_ffn_collapse_options(tmp_path, monkeypatch) -> None:
    """The export keeps batch and sequence symbolic and runs at two sizes; on its static copy the
    planner offers the six FFN collapses (x + W2 gelu(W1 x) -> one 384x384 layer with W + I)."""
    _need_model()
    from onnx_depth import ir, runtime
    from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point
    from onnx_depth.planning import candidates
    from onnx_depth.planning.realize import is_ffn_collapse

    monkeypatch.setenv("ONNX_DEPTH_CACHE", str(tmp_path))
    model = onnx.load(minilm.export_onnx())
    for v in model.graph.input:
        assert [d.dim_param for d in v.type.tensor_type.shape.dim] == ["batch", "sequence"]
    s = runtime.make_session(model, optimization="disabled")
    for b, t in ((1, 16), (3, 48)):
        feed = minilm.encode(["A short sentence."] * b, t)
        (h,) = s.run(None, feed)
        assert h.shape == (b, t, 384)
    g = ir.load(minilm.static_copy(model, 1, 32))
    run_to_fixed_point(g, LOSSLESS, PassContext())
    cands = candidates(g)
    ffn = [o for o in cands.options if is_ffn_collapse(cands, o)]
    assert len(ffn) == 6 and all(o.fused and o.geom.c_in == o.geom.c_out == 384 for o in ffn)
