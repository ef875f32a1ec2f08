"""Dask worker preload for the cluster tests: makes a loopback worker report another CPU.

`dask worker ... --preload tests/cluster/fake_cpu.py` with ONNX_DEPTH_FAKE_CPU=NAME set: the
worker's latency fingerprint (onnx_depth.latency_db.fingerprint.current) names CPU NAME, so a
worker on this machine stands for a different device (its rows must land under ITS fingerprint,
and two such workers under one target name must be refused). Nothing else changes: the
timing, onnxruntime and the models are real.
"""

import os

from onnx_depth.latency_db import fingerprint

_NAME = os.environ.get("ONNX_DEPTH_FAKE_CPU")
if _NAME and not hasattr(fingerprint, "_real_cpu_info_for_tests"):  # dask may run a preload twice
    fingerprint._real_cpu_info_for_tests = fingerprint.cpu_info

    def _fake_cpu_info():
        return (_NAME, fingerprint._real_cpu_info_for_tests()[1])

    fingerprint.cpu_info = _fake_cpu_info
