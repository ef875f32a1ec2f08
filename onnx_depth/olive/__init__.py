"""onnx-depth as an Olive pass (`pip install onnx-depth[olive]`).

Olive (0.13) runs only passes listed in its *package config*, a JSON file mapping a pass type to
the class that implements it; third-party passes are added by handing Olive a package config
that lists them (`olive run --package-config FILE`, or `olive.workflows.run(config,
package_config=...)`). This package ships one, `olive_config.json`, with the pass type
``OnnxDepth`` -> `onnx_depth.olive.onnx_depth_pass.OnnxDepthPass`.

* `package_config_path()`: the shipped file (only the OnnxDepth pass).
* `package_config()`: Olive's own package config with OnnxDepth added, as a dict, for workflows
  that mix OnnxDepth with Olive's passes; `write_package_config(path)` writes it to a file
  (also: `python -m onnx_depth.olive package-config OUT.json`).
* `run_workflow(config)`: `olive.workflows.run` with that merged package config.

Importing this module does not import Olive; `OnnxDepthPass` does (attribute access imports it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import safe_io
from ..errors import OnnxDepthError

__all__ = ["PASS_TYPE", "package_config_path", "package_config", "write_package_config", "run_workflow", "OnnxDepthPass"]

PASS_TYPE = "OnnxDepth"
_CONFIG = Path(__file__).with_name("olive_config.json")
_INSTALL_HINT = "the Olive integration needs Olive: pip install onnx-depth[olive]"


def package_config_path() -> Path:
    """The package config shipped with onnx-depth: the OnnxDepth pass only."""
    return _CONFIG


def package_config(include_olive_passes: bool = True) -> dict[str, Any]:
    """The package config as a dict; with `include_olive_passes`, Olive's built-in passes too
    (read from the installed Olive, so it never goes stale)."""
    ours = json.loads(_CONFIG.read_text())
    if not include_olive_passes:
        return ours
    try:
        from olive.package_config import OlivePackageConfig
    except ImportError:
        raise OnnxDepthError(_INSTALL_HINT) from None
    merged = json.loads(Path(OlivePackageConfig.get_default_config_path()).read_text())
    merged.setdefault("passes", {}).update(ours["passes"])
    for name, deps in ours.get("extra_dependencies", {}).items():
        merged.setdefault("extra_dependencies", {})[name] = deps
    return merged


def write_package_config(path: "str | os.PathLike[str]", include_olive_passes: bool = True) -> Path:
    """Write `package_config()` to `path` (for `olive run --package-config PATH`)."""
    return safe_io.write_text(path, json.dumps(package_config(include_olive_passes), indent=4) + "\n", "package config")


def run_workflow(config: "dict | str | os.PathLike[str]", **kwargs: Any):
    """`olive.workflows.run(config, package_config=<Olive's passes + OnnxDepth>, **kwargs)`."""
    try:
        from olive.workflows import run
    except ImportError:
        raise OnnxDepthError(_INSTALL_HINT) from None
    if not isinstance(config, dict):
        config = os.fspath(config)
    return run(config, package_config=package_config(), **kwargs)


def __getattr__(name: str):
    if name == "OnnxDepthPass":
        try:
            from .onnx_depth_pass import OnnxDepthPass
        except ImportError as e:
            if e.name and e.name.split(".")[0] == "olive":
                raise OnnxDepthError(_INSTALL_HINT) from None
            raise
        return OnnxDepthPass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
