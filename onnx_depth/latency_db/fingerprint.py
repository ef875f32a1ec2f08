"""Device fingerprint: everything besides the segment itself that a latency depends on.

Two measurements may share a database entry only if their fingerprints are equal: same CPU
model and ISA extensions, same logical core count, same onnxruntime version, same execution
provider and provider options, same intra-op thread count and graph optimization level.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Mapping

import onnxruntime as ort

from ..runtime import OPT_LEVELS

# ISA extensions that change which kernels onnxruntime's MLAS picks.
_ISA_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16",
})


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(CPU model string, sorted relevant ISA flags) from /proc/cpuinfo, else `platform`."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # first processor block is enough
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    name = (fields.get("model name") or fields.get("hardware") or fields.get("processor")
            or fields.get("cpu model") or platform.processor() or platform.machine() or "unknown")
    if name.isdigit():  # ARM's "processor : 0"
        name = platform.processor() or platform.machine() or "unknown"
    ident = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping", "cpu part") if k in fields]
    model = f"{name} ({', '.join(ident)})" if ident else name
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return f"{model} [{platform.machine()}]", tuple(sorted(flags & _ISA_FLAGS))


@dataclass(frozen=True)
class Fingerprint:
    """What a latency measurement depends on besides the segment."""

    cpu_model: str
    isa: tuple[str, ...]
    logical_cores: int
    ort_version: str
    provider: str
    provider_options: tuple[tuple[str, str], ...]
    threads: int
    optimization: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["isa"] = list(self.isa)
        d["provider_options"] = {k: v for k, v in self.provider_options}
        return d

    def key(self) -> str:
        """A stable 16-hex-digit hash of all fields."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def session_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `timer.time_model` that match this fingerprint."""
        return {"threads": self.threads, "provider": self.provider,
                "provider_options": dict(self.provider_options), "optimization": self.optimization}

    def describe(self) -> str:
        return (f"{self.cpu_model}, {self.logical_cores} cores, ORT {self.ort_version}, "
                f"{self.provider}, {self.threads} thread(s), opt={self.optimization}")


def current(
    provider: str = "CPUExecutionProvider",
    provider_options: Mapping[str, Any] | None = None,
    threads: int = 1,
    optimization: str = "all",
) -> Fingerprint:
    """The fingerprint of this machine for the given session settings (threads must be fixed:
    an unset thread count would make latencies depend on the machine's load-time defaults)."""
    if optimization not in OPT_LEVELS:
        raise ValueError(f"unknown optimization level {optimization!r}; one of {sorted(OPT_LEVELS)}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    model, isa = cpu_info()
    opts = tuple(sorted((str(k), str(v)) for k, v in (provider_options or {}).items()))
    return Fingerprint(model, isa, os.cpu_count() or 1, ort.__version__, provider, opts,
                       int(threads), optimization)
