"""The single place that talks to onnxruntime: sessions, input specs, random inputs, runs.

Everything in onnx-depth that executes a model (correctness checks, calibration, profiling,
benchmarks) goes through this module so that session settings are chosen in one place.
Measurements of what a model computes (fidelity, importance, --check, statistics, refits) run
with `RunSettings` (default: `EVAL_OPTIMIZATION`, graph optimizations off); `stream` is the loop
that runs models over feeds, used by `compare.Evaluation` and `analysis.stats.stream_tensors`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .errors import first_line

ModelLike = "onnx.ModelProto | str | os.PathLike[str] | bytes"
Session = ort.InferenceSession  # the session type, for callers that accept a session or a model

# ORT's own log lines stay off the terminal (4 = fatal only): warnings from constant folding and
# "[E:onnxruntime:...]" lines for a failing run; the error reaches the user as our one-line message.
ort.set_default_logger_severity(4)

OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# The onnxruntime graph-optimization level of every measurement of what a model computes: the
# reported fidelity, the planner's importance and re-planning, --check, activation statistics and
# the data streamed into refits. One level, so what the planner optimizes is what the report shows
# (and the oracle is onnxruntime running the graph as written, not its rewrites of it).
EVAL_OPTIMIZATION = "disabled"

# Protobuf refuses to serialize more than 2 GiB; such models are handed to ORT as a file.
_PROTO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as onnxruntime sees it. Symbolic dims are strings or None."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def session_options(
    optimization: str = "disabled",
    threads: int | None = None,
    spinning: bool = False,
) -> ort.SessionOptions:
    """SessionOptions with a named optimization level and a fixed thread count."""
    if optimization not in OPT_LEVELS:
        raise ValueError(f"unknown optimization level {optimization!r}; one of {sorted(OPT_LEVELS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[optimization]
    so.log_severity_level = 4
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def make_session(
    model: onnx.ModelProto | str | os.PathLike[str] | bytes,
    *,
    optimization: str = "disabled",
    threads: int | None = None,
    provider: str = "CPUExecutionProvider",
    provider_options: Mapping[str, str] | None = None,
    spinning: bool = False,
) -> ort.InferenceSession:
    """An InferenceSession for a ModelProto, serialized bytes or a path."""
    so = session_options(optimization, threads, spinning)
    providers = [(provider, dict(provider_options or {}))]
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() >= _PROTO_LIMIT:
            with tempfile.TemporaryDirectory(prefix="onnx-depth-") as tmp:
                path = os.path.join(tmp, "model.onnx")
                onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data")
                return ort.InferenceSession(path, so, providers=providers)
        return ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    if isinstance(model, bytes):
        return ort.InferenceSession(model, so, providers=providers)
    return ort.InferenceSession(os.fspath(model), so, providers=providers)


@dataclass(frozen=True)
class RunSettings:
    """How a model is run to measure what it computes (not how fast): one onnxruntime graph
    optimization level and one intra-op thread count (None: onnxruntime's default)."""

    optimization: str = EVAL_OPTIMIZATION
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.optimization not in OPT_LEVELS:
            raise ValueError(f"unknown optimization level {self.optimization!r}; one of {sorted(OPT_LEVELS)}")

    def session(self, model: onnx.ModelProto | str | os.PathLike[str] | bytes) -> ort.InferenceSession:
        return make_session(model, optimization=self.optimization, threads=self.threads)


class RunFailed(Exception):
    """Model number `model` of a `stream` failed on feed number `feed` (`cause`: ORT's error)."""

    def __init__(self, model: int, feed: int, cause: BaseException) -> None:
        first = first_line(cause)
        super().__init__(first)
        self.model, self.feed, self.cause = model, feed, cause


def stream(
    runs: Sequence[tuple[ort.InferenceSession, Sequence[str]]],
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    known_inputs_only: bool = False,
) -> Iterator[tuple[Mapping[str, np.ndarray], list[dict[str, np.ndarray]]]]:
    """The loop that runs models over data: for each feed (consumed lazily, so one feed and its
    outputs are in memory at a time), (feed, [{name: array} of each (session, output names)]).
    `known_inputs_only`: each session gets only the feed's entries it has inputs (or overridable
    initializers) for; otherwise the whole feed (an unknown name is onnxruntime's error).
    A run that raises becomes RunFailed (which model, which feed)."""
    wants = [{i.name for i in (*s.get_inputs(), *s.get_overridable_initializers())} if known_inputs_only else None
             for s, _ in runs]
    for k, feed in enumerate(feeds):
        outs = []
        for m, ((s, names), want) in enumerate(zip(runs, wants)):
            try:
                outs.append(run(s, feed if want is None else {n: v for n, v in feed.items() if n in want}, names))
            except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
                raise RunFailed(m, k, e) from e
        yield feed, outs


def input_specs(session: ort.InferenceSession) -> list[TensorSpec]:
    return [
        TensorSpec(i.name, tuple(i.shape), np.dtype(_ORT_TYPES.get(i.type, np.float32)))
        for i in session.get_inputs()
    ]


def overridable_specs(session: ort.InferenceSession) -> list[TensorSpec]:
    """Initializers that are also graph inputs (IR >= 4): a caller may feed them."""
    return [
        TensorSpec(i.name, tuple(i.shape), np.dtype(_ORT_TYPES.get(i.type, np.float32)))
        for i in session.get_overridable_initializers()
    ]


def output_names(session: ort.InferenceSession) -> list[str]:
    return [o.name for o in session.get_outputs()]


def concrete_shape(spec: TensorSpec, dims: Mapping[str, int] | None = None, default: int = 1) -> tuple[int, ...]:
    """Replace symbolic dims by `dims[name]` or `default`."""
    dims = dims or {}
    out = []
    for d in spec.shape:
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif isinstance(d, str) and d in dims:
            out.append(int(dims[d]))
        else:
            out.append(default)
    return tuple(out)


def random_feed(
    specs: Sequence[TensorSpec],
    rng: np.random.Generator,
    dims: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs: standard normal floats, small non-negative ints, random bools."""
    feed: dict[str, np.ndarray] = {}
    for s in specs:
        shape = concrete_shape(s, dims)
        if np.issubdtype(s.dtype, np.floating):
            value = rng.standard_normal(shape)
        elif s.dtype == np.bool_:
            value = rng.random(shape) < 0.5
        else:
            value = rng.integers(0, 8, size=shape)
        feed[s.name] = np.asarray(value, dtype=s.dtype)  # an array even for scalars (shape ())
    return feed


def random_feeds(
    session: ort.InferenceSession, n: int, seed: int = 0, dims: Mapping[str, int] | None = None,
    overridable: bool = False,
) -> list[dict[str, np.ndarray]]:
    """`n` random feeds; with `overridable`, floating-point overridable initializers are fed
    random values too (integer ones, often shapes or indices, keep their stored value)."""
    rng = np.random.default_rng(seed)
    specs = feed_specs(session, overridable)
    return [random_feed(specs, rng, dims) for _ in range(n)]


def feed_specs(session: ort.InferenceSession, overridable: bool = False) -> list[TensorSpec]:
    """The inputs a random feed fills: the graph inputs, and with `overridable` the floating-point
    overridable initializers too (integer ones, often shapes or indices, keep their value)."""
    specs = input_specs(session)
    if overridable:
        specs += [s for s in overridable_specs(session) if np.issubdtype(s.dtype, np.floating)]
    return specs


def run(
    session: ort.InferenceSession,
    feed: Mapping[str, np.ndarray],
    outputs: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run once; returns {output name: array}."""
    names = list(outputs) if outputs is not None else output_names(session)
    values = session.run(names, dict(feed))
    return dict(zip(names, values))
