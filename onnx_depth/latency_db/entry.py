"""One measured latency (`Entry`), the errors of the latency database, and the canonical
measurement time (UTC ISO-8601 with microseconds, so that string order is time order)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import OnnxDepthError

if TYPE_CHECKING:  # pragma: no cover
    from .timer import Timing

DESCRIPTION_MAX = 200
ENTRY_COLUMNS = ("samples", "median_ms", "p10_ms", "p90_ms", "floor_ms", "measured_at", "description")
ROW_COLUMNS = ("fingerprint", "signature") + ENTRY_COLUMNS



class LatencyDBError(OnnxDepthError):
    """A latency-database problem worth a one-line message (bad file, bad import, ...);
    the CLI prints it as one line with exit code 2."""


class LatencyDBCorrupt(LatencyDBError):
    """The database file is not a database or is damaged; `repair` can salvage it."""

    def __init__(self, path: str | os.PathLike[str], detail: str, *, force: bool = False) -> None:
        self.path = os.fspath(path)
        self.detail = " ".join(str(detail).split())
        super().__init__(
            f"latency database {self.path} is corrupt ({self.detail}); "
            f"run `onnx-depth db repair{' --force' if force else ''} --latency-db {self.path}`"
        )


def utc_now() -> str:
    """Current UTC time in the store's canonical ISO form."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def normalize_time(value: str) -> str:
    """Any ISO-8601 time -> canonical UTC ISO with microseconds (naive means UTC), so that
    string order is time order."""
    try:
        dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise LatencyDBError(f"bad measured_at {value!r}: not an ISO-8601 time") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Entry:
    """One measured latency. `floor_ms` is the call overhead measured alongside (None when
    unknown, e.g. rows migrated from schema v1)."""

    samples: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    floor_ms: float | None = None
    measured_at: str = ""
    description: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", int(self.samples))
        for name in ("median_ms", "p10_ms", "p90_ms"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise LatencyDBError(f"bad {name} {v!r}: must be a finite non-negative number")
            object.__setattr__(self, name, v)
        if self.floor_ms is not None:
            object.__setattr__(self, "floor_ms", float(self.floor_ms))
        if self.samples < 0:
            raise LatencyDBError(f"bad samples {self.samples}")
        object.__setattr__(self, "measured_at", normalize_time(self.measured_at) if self.measured_at else utc_now())
        if self.description is not None:
            object.__setattr__(self, "description", str(self.description)[:DESCRIPTION_MAX])

    @property
    def net_ms(self) -> float:
        """median minus the call-overhead floor (never negative)."""
        return max(self.median_ms - (self.floor_ms or 0.0), 0.0)

    @classmethod
    def from_timing(cls, timing: "Timing", description: str | None = None) -> "Entry":
        return cls(timing.samples, timing.median_ms, timing.p10_ms, timing.p90_ms,
                   timing.floor_ms, utc_now(), description)


def astuple_entry(e: Entry) -> tuple[Any, ...]:
    return tuple(getattr(e, k) for k in ENTRY_COLUMNS)
