"""The Olive pass: runs `onnx_depth.api.optimize` on an ONNX model inside an Olive workflow.

Olive finds it through the package config shipped beside this file (see onnx_depth.olive). The
output file is written with onnx-depth's own writer, so it is byte-for-byte the file that
`onnx-depth optimize IN OUT` writes with the same settings.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional, Union

from olive.common.config_utils import ParamCategory
from olive.hardware.accelerator import AcceleratorSpec
from olive.model import ONNXModelHandler
from olive.model.utils import resolve_onnx_path
from olive.passes import Pass
from olive.passes.pass_config import BasePassConfig, PassConfigParam

from .. import api
from ..errors import OnnxDepthError
from ..ir import save

logger = logging.getLogger(__name__)

# Config name -> keyword of onnx_depth.api.optimize. A value left at None is not passed, so the
# API's own default applies (as when the CLI option is not given).
_API_PARAMS = ("latency_budget", "max_error", "calibration", "lossless", "threads", "provider", "latency_db",
               "check", "seed", "allow_over_budget", "cluster", "target", "cluster_timeout")


# name -> (type, default, Olive category or None, description)
_PARAMS = {
    "latency_budget": (Optional[float], None, None,
        "Target latency as a fraction of the original's (e.g. 0.7), measured with onnxruntime on this machine."),
    "max_error": (Optional[Union[float, str]], None, None,
        "The fastest model whose error on the calibration data is at most this: an output NMSE (0.05) or 'top1:0.01'."),
    "calibration": (Optional[str], None, ParamCategory.PATH,
        "Calibration data (.npz keyed by input name, .npy, or a folder of .npy)."),
    "lossless": (Optional[bool], None, None,
        "Only exact rewrites (canonicalize, fold BatchNorm, remove identity activations, merge linear layers)."),
    "threads": (Optional[int], None, None,
        "onnxruntime intra-op threads for latency measurements."),
    "provider": (Optional[str], None, None,
        "Execution provider latency is measured with (onnx-depth's default: CPUExecutionProvider)."),
    "latency_db": (Optional[str], None, ParamCategory.PATH,
        "Latency database file (default: $ONNX_DEPTH_LATENCY_DB or ~/.cache/onnx-depth/latency.sqlite)."),
    "check": (Optional[int], None, None,
        "Compare input and output on this many random inputs; fail the pass on a mismatch."),
    "seed": (Optional[int], None, None,
        "Random seed."),
    "allow_over_budget": (Optional[bool], None, None,
        "Keep the best plan found even if its measured latency misses the budget."),
    "cluster": (Optional[str], None, None,
        "Dask scheduler (tcp://HOST:8786): measure latency on the workers of `target` and evaluate importance on the cluster (pip install onnx-depth[cluster])."),
    "target": (Optional[str], None, None,
        "With `cluster`: the target device's name (workers started with --resources onnxdepth-target-NAME=1)."),
    "cluster_timeout": (Optional[float], None, None,
        "With `cluster`: seconds to reach the scheduler before failing (default 10)."),
    "report": (bool, True, None,
        "Write onnx-depth's JSON report beside the output model (onnx_depth_report.json)."),
}


@functools.lru_cache(maxsize=None)
def _value_error_class(cls: type[OnnxDepthError]) -> type[OnnxDepthError]:
    return type(cls.__name__, (cls, ValueError), {"__module__": cls.__module__, "__doc__": cls.__doc__})


def _user_error(e: OnnxDepthError) -> OnnxDepthError:
    """The same error, also a ValueError: Olive re-raises ValueError (its "user error") from a
    workflow, while other exceptions are logged and the workflow ends with no output model."""
    err = _value_error_class(type(e))(*e.args)
    for k, v in vars(e).items():
        setattr(err, k, v)
    return err


class OnnxDepthPass(Pass):
    """Make an ONNX model shallower and faster with onnx-depth (BatchNorm folding, activation
    linearization, latency-driven layer merging). The parameters mirror `onnx_depth.api.optimize`
    and the `onnx-depth optimize` options of the same names."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        return {name: PassConfigParam(type_=t, default_value=default, description=desc,
                                      **({} if category is None else {"category": category}))
                for name, (t, default, category, desc) in _PARAMS.items()}

    @classmethod
    def api_kwargs(cls, config: "BasePassConfig | dict") -> dict:
        """The keyword arguments of onnx_depth.api.optimize for a pass config (None values dropped)."""
        get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
        return {k: get(k) for k in _API_PARAMS if get(k) is not None}

    def _run_for_config(
        self, model: ONNXModelHandler, config: type[BasePassConfig], output_model_path: str
    ) -> ONNXModelHandler:
        if not isinstance(model, ONNXModelHandler):
            raise ValueError(f"OnnxDepth needs an ONNX model, got {type(model).__name__}")
        src = model.model_path
        output_model_path = resolve_onnx_path(output_model_path, Path(src).name)
        kwargs = self.api_kwargs(config)
        logger.info("onnx-depth: optimize(%s, %s)", src, ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
        try:
            result = api.optimize(src, **kwargs)
        except OnnxDepthError as e:
            raise _user_error(e) from e
        out = Path(output_model_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        save(result.model, out)
        result.report.output = str(out)
        logger.info("onnx-depth:\n%s", result.report.table())
        if config.report:
            result.report.write_json(out.parent / "onnx_depth_report.json")
        # The model's folder is the model: the output file, its external data (<name>.data, for
        # models over protobuf's 2 GB) and the report travel together to Olive's output folder.
        return ONNXModelHandler(model_path=str(out.parent), onnx_file_name=out.name,
                                model_attributes=model.model_attributes)
