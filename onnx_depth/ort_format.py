"""Emit an optimized model in ORT format for onnxruntime minimal/mobile builds.

`emit_ort` runs onnxruntime's own converter (`python -m onnxruntime.tools.convert_onnx_models_to_ort`)
on an ONNX file that onnx-depth already wrote, and leaves two files in the output directory:

  <name>.ort                 the ORT-format model (loadable with onnxruntime.InferenceSession)
  required_operators.config  the operators the model needs, the input of an onnxruntime minimal
                             build (`build.sh --minimal_build --include_ops_by_config FILE`)

The converter is run in a subprocess: it prints progress on stdout and may abort inside
onnxruntime, neither of which should reach the caller. Its options:

* optimization style "Fixed" (default): onnxruntime's graph optimizations are applied before
  saving, as its documentation recommends unless a compiling EP (NNAPI, CoreML) runs the model;
  "Runtime" saves them to be replayed at load time.
* target platform None (default): portable output, without the x86-only NCHWc layout transforms;
  "amd64" allows them, "arm" allows int8 QDQ kernels for ARM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from . import safe_io
from .errors import InputError, UnsupportedModel

__all__ = ["OrtEmit", "OrtConversionError", "emit_ort", "parse_operator_config", "model_op_types"]

CONFIG_NAME = "required_operators.config"
STYLES = ("Fixed", "Runtime")
PLATFORMS = (None, "amd64", "arm")
_DEFAULT_DOMAIN = "ai.onnx"


class OrtConversionError(UnsupportedModel):
    """onnxruntime's ORT-format converter rejected the model."""


@dataclass
class OrtEmit:
    """What `emit_ort` wrote.

    operators: {domain: {opset: [op types]}} read from the operator config (domains as the config
    spells them: "ai.onnx", "com.microsoft", ...).
    dropped_ops: op types the original model used that the optimized model no longer uses
    (sorted; non-default domains as "domain:OpType"), empty without `original`.
    """

    ort_path: Path
    config_path: Path
    operators: dict[str, dict[int, list[str]]]
    dropped_ops: list[str] = field(default_factory=list)
    style: str = "Fixed"
    target_platform: str | None = None

    @property
    def op_types(self) -> set[str]:
        """Every op type in the config, qualified like `dropped_ops`."""
        return {_qualify(domain, op) for domain, sets in self.operators.items() for ops in sets.values() for op in ops}

    def to_dict(self) -> dict:
        return {
            "ort_path": str(self.ort_path),
            "config_path": str(self.config_path),
            "operators": {d: {str(v): ops for v, ops in s.items()} for d, s in self.operators.items()},
            "dropped_ops": list(self.dropped_ops),
            "style": self.style,
            "target_platform": self.target_platform,
        }

    def summary(self) -> str:
        n = sum(len(ops) for s in self.operators.values() for ops in s.values())
        line = f"wrote {self.ort_path} and {self.config_path} ({n} operator(s))"
        if self.dropped_ops:
            line += f"; no longer needed: {', '.join(self.dropped_ops)}"
        return line


def _qualify(domain: str, op_type: str) -> str:
    return op_type if domain in ("", _DEFAULT_DOMAIN) else f"{domain}:{op_type}"


def model_op_types(model: "onnx.ModelProto | str | os.PathLike[str]") -> set[str]:
    """Op types used anywhere in a model: main graph, subgraphs (If/Loop/Scan) and local functions.

    Calls of the model's own local functions are not operators and are left out (their bodies
    are counted instead). Non-default domains are qualified as "domain:OpType".
    """
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        try:
            model = onnx.load(os.fspath(path), load_external_data=False)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except Exception as e:  # protobuf DecodeError and friends
            raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    local = {(f.domain, f.name) for f in model.functions}
    ops: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            if (node.domain, node.op_type) not in local:
                ops.add(_qualify(node.domain, node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(model.graph)
    for f in model.functions:
        visit(onnx.helper.make_graph(list(f.node), f.name, [], []))
    return ops


def parse_operator_config(path: "str | os.PathLike[str]") -> dict[str, dict[int, list[str]]]:
    """Read an onnxruntime `required_operators[_and_types].config`: `domain;opset;Op1,Op2,...` lines.

    With type reduction an entry is `Op{json}`; the json (which contains commas) is dropped.
    """
    out: dict[str, dict[int, list[str]]] = {}
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(";", 2)
        if len(parts) != 3 or not parts[1].strip().isdigit():
            raise OrtConversionError(f"{path}:{lineno}: not an operator config line: {line[:80]!r}")
        domain, opset, ops = parts[0].strip(), int(parts[1]), parts[2]
        names = [m.group(1) for m in re.finditer(r"([A-Za-z_][\w.]*)\s*(?:\{(?:[^{}]|\{[^{}]*\})*\})?\s*(?:,|$)", ops)]
        out.setdefault(domain, {}).setdefault(opset, [])
        out[domain][opset] = sorted(set(out[domain][opset]) | set(names))
    return out


def _stage(model_path: Path, stage: Path) -> Path:
    """Link (or copy) the model and its external data files into `stage` as `model.onnx`.

    The converter only takes files named *.onnx and skips *.optimized.onnx (the name our demo
    writes), so it is always given a staged copy with a neutral name.
    """
    staged = stage / "model.onnx"
    _link_or_copy(model_path, staged)
    try:
        proto = onnx.load(os.fspath(model_path), load_external_data=False)
    except Exception as e:
        raise InputError(f"{model_path}: not a readable ONNX model ({type(e).__name__})") from None
    locations = {entry.value for t in _tensors(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL
                 for entry in t.external_data if entry.key == "location"}
    for loc in sorted(locations):
        src = model_path.parent / loc
        if not src.is_file():
            raise InputError(f"{model_path}: external data file {loc} is missing")
        dst = stage / loc
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, dst)
    return staged


def _tensors(graph: onnx.GraphProto):
    """Initializers and tensor attributes of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _failure_line(output: str, staged: Path, src: Path) -> str:
    """The most informative line of the converter's output, without onnxruntime's C++ location."""
    output = output.replace(os.fspath(staged.resolve()), os.fspath(src)).replace(os.fspath(staged), os.fspath(src))
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    line = next((ln for ln in reversed(lines) if "[ONNXRuntimeError]" in ln), None)
    if line is None:
        line = next((ln for ln in reversed(lines) if re.match(r"^[\w.]*(Error|Exception)\w*:", ln)), lines[-1] if lines else "no output")
    line = line[line.index("[ONNXRuntimeError]"):] if "[ONNXRuntimeError]" in line else line
    # "[ONNXRuntimeError] : 1 : FAIL : Load model from X failed:/src/file.cc:256 ns::f(args) message"
    head = re.match(r"\[ONNXRuntimeError\] : \d+ : (\w+) : (?:Load model from .*? failed:)?", line)
    if head:
        rest = line[head.end():]
        m = re.match(r"\S+\.(?:cc|cpp|h):\d+ [\w:~<>]+\((?:[^()]|\([^()]*\))*\) (.*)$", rest)
        line = f"{head.group(1)}: {(m.group(1) if m else rest).strip()}"
    return line[:300]


def planned_outputs(model_path: "str | os.PathLike[str]", out_dir: "str | os.PathLike[str]", style: str = "Fixed") -> tuple[str, str]:
    """(ORT file, operator config) that `emit_ort` writes for `model_path` into `out_dir`."""
    src = Path(model_path)
    name = src.name[: -len(".onnx")] if src.name.lower().endswith(".onnx") else src.name
    suffix = ".with_runtime_opt.ort" if style == "Runtime" else ".ort"
    out = Path(out_dir)
    return os.fspath(out / f"{name}{suffix}"), os.fspath(out / CONFIG_NAME)


def emit_ort(
    model_path: "str | os.PathLike[str]",
    out_dir: "str | os.PathLike[str]",
    *,
    original: "onnx.ModelProto | str | os.PathLike[str] | None" = None,
    style: str = "Fixed",
    target_platform: str | None = None,
    timeout: float | None = 600,
) -> OrtEmit:
    """Convert the ONNX file `model_path` to ORT format in `out_dir` (created if missing).

    Writes `<out_dir>/<name>.ort` (`.with_runtime_opt.ort` for style "Runtime"; `<name>` is the
    file name without `.onnx`) and `<out_dir>/required_operators.config`, replacing existing ones.
    `original`: the model before optimization, to report which op types it needed that the
    optimized model no longer does (`dropped_ops`).
    Raises InputError for unreadable inputs and OrtConversionError when the converter fails.
    """
    if style not in STYLES:
        raise InputError(f"ORT optimization style must be one of {', '.join(STYLES)}, not {style!r}")
    if target_platform not in PLATFORMS:
        raise InputError(f"ORT target platform must be amd64 or arm, not {target_platform!r}")
    src = Path(model_path)
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    out = safe_io.check_directory(out_dir, "ORT output directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the ORT output directory ({e.strerror})") from None
    ort_path, config_path = (Path(p) for p in planned_outputs(src, out, style))
    for p in (ort_path, config_path):
        safe_io.check_destination(p, "ORT output")
    suffix = ".with_runtime_opt.ort" if style == "Runtime" else ".ort"

    with tempfile.TemporaryDirectory(prefix=".onnx-depth-ort-", dir=out) as tmp:
        stage, conv = Path(tmp) / "in", Path(tmp) / "out"
        stage.mkdir()
        staged = _stage(src, stage)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", os.fspath(staged),
               "--output_dir", os.fspath(conv), "--optimization_style", style]
        if target_platform is not None:
            cmd += ["--target_platform", target_platform]
        env = dict(os.environ)
        env.pop("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", None)  # always the "all" level and file names
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise OrtConversionError(f"{src}: ORT conversion did not finish in {timeout:g} s") from None
        produced = conv / f"model{suffix}"
        config = conv / ("model.required_operators" + (".with_runtime_opt" if style == "Runtime" else "") + ".config")
        if proc.returncode != 0 or not produced.is_file() or not config.is_file():
            why = _failure_line(proc.stdout + "\n" + proc.stderr, staged, src) if proc.returncode != 0 else "converter wrote no output"
            raise OrtConversionError(f"{src}: onnxruntime could not convert it to ORT format: {why}")
        text = config.read_text().replace(os.fspath(produced.resolve()), os.fspath(ort_path.resolve()))
        safe_io.check_destination(ort_path, "ORT output")
        os.chmod(produced, safe_io.file_mode())
        os.replace(produced, ort_path)  # a fresh file of the converter's, in a private folder under `out`
        safe_io.write_text(config_path, text, "ORT operator config")

    dropped: list[str] = []
    if original is not None:
        dropped = sorted(model_op_types(original) - model_op_types(src))
    return OrtEmit(ort_path, config_path, parse_operator_config(config_path), dropped, style, target_platform)
