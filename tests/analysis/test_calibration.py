import numpy as np
import pytest

from onnx_depth.analysis.calibration import Calibration, as_calibration, from_arrays, load_calibration
from onnx_depth.errors import InputError
from onnx_depth.runtime import TensorSpec

F32 = np.dtype(np.float32)


def specs(*items):
    return [TensorSpec(n, tuple(s), np.dtype(d)) for n, s, d in items]


ONE_FIXED = specs(("x", (1, 3, 4, 4), F32))
ONE_DYN = specs(("x", ("N", 3, "H", "W"), F32))
TWO = specs(("a", ("N", 2), F32), ("b", ("N", 5), np.int64))


def collect(cal, bs=None):
    return list(cal.batches(bs))


def test_fixed_batch_1_splits_into_single_samples():
    x = np.arange(6 * 48, dtype=np.float32).reshape(6, 3, 4, 4)
    cal = from_arrays(x, ONE_FIXED)
    feeds = collect(cal, 4)
    assert len(cal) == 6 and cal.fixed_batch == 1
    assert [f["x"].shape[0] for f in feeds] == [1] * 6
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), x)


def test_dynamic_batch_uses_batch_size_and_casts_float64():
    x = np.random.default_rng(0).standard_normal((10, 3, 5, 7))  # float64
    cal = from_arrays(x, ONE_DYN)
    feeds = collect(cal, 4)
    assert [f["x"].shape[0] for f in feeds] == [4, 4, 2]
    assert all(f["x"].dtype == np.float32 for f in feeds)
    np.testing.assert_allclose(np.concatenate([f["x"] for f in feeds]), x.astype(np.float32))


def test_npz_streams_by_name_and_split(tmp_path):
    a = np.random.default_rng(1).standard_normal((9, 2)).astype(np.float32)
    b = np.arange(45).reshape(9, 5)
    p = tmp_path / "cal.npz"
    np.savez_compressed(p, a=a, b=b)
    cal = load_calibration(p, TWO)
    first, second = cal.split(6)
    got = collect(second, 2)
    assert [f["a"].shape[0] for f in got] == [2, 1]
    np.testing.assert_array_equal(np.concatenate([f["a"] for f in got]), a[6:])
    np.testing.assert_array_equal(np.concatenate([f["b"] for f in got]), b[6:])
    # a second pass (re-reading from the start) gives the same data
    np.testing.assert_array_equal(np.concatenate([f["a"] for f in collect(first, 4)]), a[:6])
    np.testing.assert_array_equal(np.concatenate([f["a"] for f in collect(first, 4)]), a[:6])


def test_npz_single_array_any_key_for_single_input(tmp_path):
    x = np.ones((2, 3, 4, 4), np.float32)
    p = tmp_path / "x.npz"
    np.savez(p, x)  # key arr_0
    assert len(load_calibration(p, ONE_FIXED)) == 2


def test_npy_and_folder_of_npy(tmp_path):
    x = np.random.default_rng(2).standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "all.npy", x)
    assert len(load_calibration(tmp_path / "all.npy", ONE_FIXED)) == 5
    d = tmp_path / "dir"
    d.mkdir()
    np.save(d / "000.npy", x[0])  # one sample without batch axis
    np.save(d / "001.npy", x[1:5])  # a batch
    cal = load_calibration(d, ONE_FIXED)
    assert len(cal) == 5
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in cal.batches()]), x)


def test_folder_of_npz_multi_input(tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", a=np.full((2, 2), i, np.float32), b=np.zeros((2, 5), np.int64))
    cal = load_calibration(tmp_path, TWO)
    assert len(cal) == 6


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"a": np.zeros((2, 2), np.float32), "c": np.zeros((2, 5), np.int64)}, "missing input(s) 'b'"),
        ({"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 5), np.int64)}, "axis 1: 3 != 2"),
        ({"a": np.zeros((2, 2), np.float32), "b": np.zeros((2, 5), np.float32)}, "dtype float32, model expects int64"),
        ({"a": np.zeros((2, 2), np.float32), "b": np.zeros((3, 5), np.int64)}, "different sample counts"),
        ({"a": np.zeros((2, 2, 2), np.float32), "b": np.zeros((2, 5), np.int64)}, "rank 2"),
    ],
)
def test_clear_one_line_errors(data, needle):
    with pytest.raises(InputError) as e:
        from_arrays(data, TWO)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match="no such"):
        load_calibration(tmp_path / "nope.npz", ONE_FIXED)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_calibration(tmp_path / "bad.npz", ONE_FIXED)
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(InputError, match="must be .npz, .npy"):
        load_calibration(tmp_path / "x.txt", ONE_FIXED)
    np.save(tmp_path / "i.npy", np.zeros((2, 3, 4, 4), np.int32))
    with pytest.raises(InputError, match="dtype int32"):
        load_calibration(tmp_path / "i.npy", ONE_FIXED)
    with pytest.raises(InputError, match="2 inputs"):
        load_calibration(tmp_path / "i.npy", TWO)


def test_fixed_batch_must_divide():
    sp = specs(("x", (4, 3), F32))
    with pytest.raises(InputError, match="multiple of the model's fixed batch size 4"):
        from_arrays(np.zeros((6, 3), np.float32), sp)


def test_npz_reads_are_bounded(tmp_path):
    # 64 samples of 64 KiB: reading batch by batch never materializes the whole member
    x = np.random.default_rng(3).standard_normal((64, 16, 32, 32)).astype(np.float32)
    p = tmp_path / "big.npz"
    np.savez_compressed(p, x=x)
    sp = specs(("x", ("N", 16, 32, 32), F32))
    cal = as_calibration(str(p), sp)
    assert isinstance(cal, Calibration)
    total = 0
    for f in cal.batches(8):
        assert f["x"].nbytes == 8 * 16 * 32 * 32 * 4
        np.testing.assert_array_equal(f["x"], x[total:total + 8])
        total += 8
    assert total == 64
