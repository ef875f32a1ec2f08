"""onnx-depth: make ONNX models shallower and faster."""

__version__ = "0.1.0"
