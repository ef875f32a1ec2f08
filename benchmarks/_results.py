"""Write one benchmark's section of benchmarks/RESULTS.md (between its own markers), so that
several benchmark scripts can update the file without clobbering each other."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is written by the script named in it; rerun the command to refresh it.\n"


def machine() -> str:
    import onnxruntime

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, onnxruntime {onnxruntime.__version__}"


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) the section `name` of RESULTS.md."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- begin {name} -->\n## {title}\n\nCommand: `{command}`  \n"
        f"Measured {stamp} on {machine()}.\n\n{body.strip()}\n<!-- end {name} -->\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->\n?", re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)
