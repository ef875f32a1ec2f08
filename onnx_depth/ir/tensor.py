"""Constant tensors of the IR, with their numpy arrays loaded lazily."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper


class Initializer:
    """A named constant. Keeps the original TensorProto until the array is replaced, so an
    untouched initializer is emitted byte for byte as it was read (external data included:
    it is read only when somebody asks for the array or the model is emitted)."""

    __slots__ = ("name", "_proto", "_array", "_base_dir")

    def __init__(
        self,
        name: str,
        proto: onnx.TensorProto | None = None,
        array: np.ndarray | None = None,
        base_dir: str | None = None,
    ) -> None:
        if (proto is None) == (array is None):
            raise ValueError("Initializer needs exactly one of proto or array")
        self.name = name
        self._proto = proto
        self._array = None if array is None else np.asarray(array)
        self._base_dir = base_dir

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            assert self._proto is not None
            self._array = numpy_helper.to_array(self._proto, self._base_dir or "")
        return self._array

    @array.setter
    def array(self, value: np.ndarray) -> None:
        self._array = np.asarray(value)
        self._proto = None

    @property
    def shape(self) -> tuple[int, ...]:
        if self._proto is not None:
            return tuple(int(d) for d in self._proto.dims)
        return tuple(self._array.shape)  # type: ignore[union-attr]

    @property
    def dtype(self) -> np.dtype:
        if self._proto is not None:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self._proto.data_type))
        return self._array.dtype  # type: ignore[union-attr]

    @property
    def elem_type(self) -> int:
        if self._proto is not None:
            return self._proto.data_type
        return onnx.helper.np_dtype_to_tensor_dtype(self.dtype)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_external(self) -> bool:
        return self._proto is not None and external_data_helper.uses_external_data(self._proto)

    def to_proto(self) -> onnx.TensorProto:
        """A TensorProto holding the data inline (external data is read in)."""
        if self._proto is not None:
            if not external_data_helper.uses_external_data(self._proto):
                return self._proto
            t = onnx.TensorProto()
            t.CopyFrom(self._proto)
            external_data_helper.load_external_data_for_tensor(t, self._base_dir or os.getcwd())
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
            return t
        return numpy_helper.from_array(self._array, self.name)

    def copy(self) -> "Initializer":
        c = Initializer.__new__(Initializer)
        c.name, c._proto, c._array, c._base_dir = self.name, self._proto, self._array, self._base_dir
        return c
