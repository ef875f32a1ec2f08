"""Input shapes: which concrete values the symbolic dims of a model's inputs take, where.

Real exports have symbolic dims (a dynamic batch ``N``; transformers a sequence ``T``; detectors
``height`` / ``width``). onnx-depth keeps them symbolic in the emitted model (every rewrite is
valid for every value of the dims) but needs concrete values where it measures or runs:

* shape inference for sizes (MACs, the planner's segment geometry: :func:`fixed_view`),
* latency profiling and the end-to-end measurement (static copies: :func:`fix_inputs`),
* ``--check`` (several samples: :func:`check_samples`).

The values (an :class:`InputShapes`), per graph input:

1. ``--input-shape NAME:D1,D2,...`` / ``input_shapes={NAME: [D1, ...]}`` gives them
   (``--input-shape D1,D2,...`` when the model has one input). A static dim must keep its value.
2. Otherwise a symbolic **axis 0** (batch) is 1.
3. Other symbolic dims take the calibration data's shape for that input, when given.
4. Otherwise: a one-line :class:`~onnx_depth.errors.InputError` (exit 2) naming the dims and
   the flag.

Dims that share a ``dim_param`` name (other than ``"?"``) take the same value in every input (``attention_mask``
follows ``input_ids``). ``--check`` samples: the values above, and when some batch dim took the
default, the same with batch 3 (dims given by ``--input-shape`` are checked exactly as given).
"""

from __future__ import annotations

import copy as _copy
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from . import runtime
from .errors import InputError, first_line
from .ir.exporter import to_proto
from .ir.graph import value_info_dims
from .ir.importer import infer_shapes

FLAG = "--input-shape"
CHECK_BATCH = 3  # the second batch size --check samples


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, dims (int: static; str: a dim_param; None: anonymous), elem type."""

    name: str
    dims: tuple
    elem_type: int

    def is_symbolic(self, axis: int) -> bool:
        d = self.dims[axis]
        return not (isinstance(d, int) and d >= 0)

    @property
    def symbolic_axes(self) -> list[int]:
        return [a for a in range(len(self.dims)) if self.is_symbolic(a)]

    def dim_label(self, axis: int) -> str:
        d = self.dims[axis]
        return f"{self.name}[{axis}]" + (f" ({d!r})" if isinstance(d, str) else "")


@dataclass
class InputShapes:
    """One concrete shape per graph input, and where each came from ("given", "default",
    "calibration", "static")."""

    shapes: dict[str, tuple[int, ...]]
    source: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """`x:1x3x224x224, y:...` (what the report prints)."""
        return ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in self.shapes.items())

    def to_dict(self) -> dict:
        return {"shapes": {k: list(v) for k, v in self.shapes.items()}, "source": dict(self.source)}


# ------------------------------------------------------------------------------ reading
def input_specs(model: "onnx.ModelProto | str | os.PathLike[str]") -> list[InputSpec]:
    """The graph inputs that are not initializers (overridable initializers are weights here)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    out = []
    for v in model.graph.input:
        if v.name in inits or not v.type.HasField("tensor_type"):
            continue
        out.append(InputSpec(v.name, value_info_dims(v) or (), v.type.tensor_type.elem_type))
    return out


def has_symbolic_dims(model) -> bool:
    return any(s.symbolic_axes for s in input_specs(model))


def parse_input_shapes(items: "Sequence[str] | Mapping[str, Sequence[int]] | None") -> dict[str, list[int]] | None:
    """``["x:1,3,224,224", "mask:1,128"]`` or ``["1,3,224,224"]`` (one input; key "") -> dict.
    A mapping is validated and returned as lists."""
    if items is None:
        return None
    out: dict[str, list[int]] = {}
    if isinstance(items, Mapping):
        for k, v in items.items():
            out[str(k)] = _dims_of(v, f"input_shapes[{k!r}]")
        return out
    if isinstance(items, str):
        items = [items]
    for text in items:
        name, sep, dims = str(text).rpartition(":")
        if not sep:
            name, dims = "", str(text)
        if name in out:
            raise InputError(f"{FLAG}: input {name or '(the only input)'} given twice")
        out[name] = _dims_of(dims.replace("x", ",").split(","), f"{FLAG} {text}")
    return out


def _dims_of(values, where: str) -> list[int]:
    try:
        dims = [int(str(v).strip()) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{where}: dims must be positive integers, e.g. {FLAG} x:1,3,224,224") from None
    if not dims or any(d < 1 for d in dims):
        raise InputError(f"{where}: dims must be positive integers, e.g. {FLAG} x:1,3,224,224")
    return dims


# ------------------------------------------------------------------------------ resolving
def resolve(
    model: "onnx.ModelProto | str | os.PathLike[str]",
    given: "Mapping[str, Sequence[int]] | Sequence[str] | None" = None,
    calibration=None,
    *,
    batch: int = 1,
) -> InputShapes:
    """The concrete shape of every input (see the module docstring for the rules)."""
    specs = input_specs(model)
    given = parse_input_shapes(given) or {}
    if "" in given:
        if len(specs) != 1:
            raise InputError(f"{FLAG} without a name needs a model with one input; this one has "
                             f"{', '.join(s.name for s in specs)}: write {FLAG} NAME:D1,D2,...")
        given = {specs[0].name: given.pop("")} | given
    names = {s.name for s in specs}
    unknown = [k for k in given if k not in names]
    if unknown:
        raise InputError(f"{FLAG}: no input named {', '.join(map(repr, unknown))}; inputs: {', '.join(sorted(names))}")
    cal_shapes = _calibration_shapes(calibration)
    symbols: dict[str, int] = {}
    shapes: dict[str, list[int | None]] = {}
    source: dict[str, str] = {}
    # 1. given (and their dim_params, for the other inputs)
    for s in specs:
        if s.name not in given:
            continue
        dims = given[s.name]
        if len(dims) != len(s.dims):
            raise InputError(f"{FLAG} {s.name}: {len(dims)} dims given, the input has rank {len(s.dims)} {_fmt(s.dims)}")
        for a, (want, got) in enumerate(zip(s.dims, dims)):
            if not s.is_symbolic(a) and want != got:
                raise InputError(f"{FLAG} {s.name}: axis {a} is static {want} in the model, got {got}")
            if _named(want):
                if symbols.setdefault(want, got) != got:
                    raise InputError(f"{FLAG}: dim {want!r} is given as {symbols[want]} and {got}")
        shapes[s.name] = list(dims)
        source[s.name] = "given"
    # 2-4. defaults
    missing: list[str] = []
    rank = {"static": 0, "given": 1, "default": 2, "calibration": 3}
    for s in specs:
        if s.name in shapes:
            continue
        dims: list[int | None] = []
        src = "static"
        for a, d in enumerate(s.dims):
            if not s.is_symbolic(a):
                dims.append(int(d))
                continue
            if _named(d) and d in symbols:
                dims.append(symbols[d])
                how = "given"
            elif a == 0:
                dims.append(int(batch))
                how = "default"
            elif s.name in cal_shapes and len(cal_shapes[s.name]) == len(s.dims):
                dims.append(int(cal_shapes[s.name][a]))
                how = "calibration"
            else:
                dims.append(None)
                missing.append(s.dim_label(a))
                continue
            src = max(src, how, key=rank.__getitem__)
            if _named(d):
                symbols.setdefault(d, int(dims[-1]))
        shapes[s.name] = dims
        source[s.name] = src
    if missing:
        example = " ".join(f"{FLAG} {s.name}:{','.join(str(x) if x is not None else 'D' for x in shapes[s.name])}"
                           for s in specs if None in shapes[s.name])
        raise InputError(f"symbolic dim(s) {', '.join(missing)} have no value: give them with {FLAG} "
                         f"(e.g. {example}) or pass --calibration data")
    return InputShapes({k: tuple(int(x) for x in v) for k, v in shapes.items()}, source)


def _named(d) -> bool:
    """A dim_param that names a dim (paddle2onnx writes "?" for any unknown dim: not a name)."""
    return isinstance(d, str) and d not in ("?", "-1")


def _calibration_shapes(cal) -> dict[str, tuple[int, ...]]:
    """{input: shape of one calibration feed} (None / unknown objects: {})."""
    if cal is None:
        return {}
    try:
        feed = next(iter(cal.batches(1)))
    except (AttributeError, StopIteration, TypeError):
        return {}
    return {k: tuple(np.asarray(v).shape) for k, v in feed.items()}


def check_samples(model, given=None, calibration=None) -> list[InputShapes]:
    """The shapes `--check` runs at: `resolve`'s, and the same with batch CHECK_BATCH where a
    batch dim took the default (inputs given by --input-shape are checked as given)."""
    base = resolve(model, given, calibration)
    out = [base]
    specs = input_specs(model)
    if any(base.source.get(s.name) in ("default", "calibration") and s.dims and s.is_symbolic(0) for s in specs):
        alt = resolve(model, given, calibration, batch=CHECK_BATCH)
        if alt.shapes != base.shapes:
            out.append(alt)
    return out


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# ------------------------------------------------------------------------------ static copies
def fix_inputs(model: onnx.ModelProto, shapes: InputShapes, *, infer: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose inputs have the static `shapes` (nothing else changes; the
    intermediates' value_info and the outputs' dims are dropped so that nothing stale
    contradicts the new input shapes). `infer`: then re-infer them (for --fix-shapes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in m.graph.input:
        if v.name in shapes.shapes:
            tt = v.type.tensor_type
            tt.ClearField("shape")
            for d in shapes.shapes[v.name]:
                tt.shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]
    for o in m.graph.output:
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")
    if infer:
        m = infer_shapes(m)
    return m


def run_error(shapes: InputShapes, e: BaseException, what: str = "the model") -> InputError:
    """The one-line error of a model that does not run at `shapes`."""
    text = first_line(e)
    if len(text) > 240:
        text = text[:237] + "..."
    return InputError(f"{what} does not run at input shape {shapes.describe()} ({text}); "
                      f"give the shapes it runs at with {FLAG}")


def feed_at(specs, shapes: InputShapes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs (runtime.random_feed's distributions) for a session's input `specs`
    (runtime.input_specs), of exactly `shapes`."""
    fixed = [runtime.TensorSpec(s.name, tuple(shapes.shapes.get(s.name, s.shape)), s.dtype) for s in specs]
    return runtime.random_feed(fixed, rng)


def fixed_view(graph, shapes: InputShapes, *, threads: int | None = 1) -> dict[str, tuple[int, ...]]:
    """{tensor: static shape} of every tensor of `graph` (an IR Graph) at the input `shapes`,
    measured by running a copy of the model once with onnxruntime (every intermediate made an
    output): exact, whatever shape inference can or cannot propagate (Shape/Gather/Reshape
    chains, Resize). The graph is not changed. InputError (one line) when it does not run."""
    proto = fix_inputs(to_proto(graph.copy(), check=False), shapes, infer=True)
    known = {o.name for o in proto.graph.output}
    types = {v.name: v for v in proto.graph.value_info}
    for n in proto.graph.node:
        for t in n.output:
            if t and t not in known and t in types and types[t].type.tensor_type.elem_type:
                vi = _copy.deepcopy(types[t])
                vi.type.tensor_type.ClearField("shape")
                proto.graph.output.append(vi)
                known.add(t)
    try:
        sess = runtime.make_session(proto, threads=threads)
        feed = feed_at(runtime.input_specs(sess), shapes, np.random.default_rng(0))
        names = runtime.output_names(sess)
        values = sess.run(names, feed)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise run_error(shapes, e) from e
    out = {k: tuple(int(d) for d in np.shape(v)) for k, v in zip(names, values)}
    out.update({k: tuple(v) for k, v in shapes.shapes.items()})
    return out


def symbolic_signature(model) -> list[tuple[str, tuple]]:
    """(input name, dims) of the inputs: what an emitted model must keep exactly."""
    return [(s.name, s.dims) for s in input_specs(model)]


def strip_value_info(model: onnx.ModelProto, names: Iterable[str] | None = None) -> onnx.ModelProto:
    """Drop intermediate value_info (all, or `names`) in place; returns the model."""
    if names is None:
        del model.graph.value_info[:]
    else:
        drop = set(names)
        keep = [v for v in model.graph.value_info if v.name not in drop]
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
    return model


__all__ = ["CHECK_BATCH", "FLAG", "InputShapes", "InputSpec", "check_samples", "feed_at", "fix_inputs", "fixed_view",
           "has_symbolic_dims", "input_specs", "parse_input_shapes", "resolve", "run_error", "strip_value_info",
           "symbolic_signature"]
