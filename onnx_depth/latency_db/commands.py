"""`onnx-depth db ...`: inspect and maintain the latency database.

    db stats  [--json]                 entries, fingerprints, size, schema version
    db export FILE                     .json or .csv
    db import FILE                     merge; the newer measured_at wins on conflicts
    db clear  [--yes] [--fingerprint KEY]
    db repair [--force]                salvage a damaged file (keeps <db>.corrupt)

Each takes `--latency-db PATH` (default: `store.default_path()`). Errors are one line on stderr
with exit code 2.

    profile MODEL [--threads N] [--provider NAME] [--latency-db PATH] [--max-layers K]
                  [--max-kernel K] [--no-dense] [--refresh]
                  [--cluster tcp://HOST:8786 --target NAME [--cluster-timeout S]]

loads MODEL, runs the lossless passes, enumerates every candidate segment option
(onnx_depth.planning.segments) and times each distinct one that the database does not hold yet
(plus the whole model), then prints "N measured, M cached". Latencies are stored per device
fingerprint, which includes the thread count (default 1) and the provider. With --cluster the
segments are timed on the Dask workers of target NAME and stored under THEIR fingerprint
(onnx_depth.cluster; dask is imported only then).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .repair import repair
from .store import LatencyDBError, LatencyStore, default_path

EXIT_ERROR = 2


def register(subparsers: "argparse._SubParsersAction[Any]") -> argparse.ArgumentParser:
    """Add the `db` command (with its sub-commands) and the `profile` command to an argparse
    subparsers object; returns the `db` parser."""
    db = subparsers.add_parser("db", help="inspect and maintain the latency database",
                               description="Inspect and maintain the latency database.")
    sub = db.add_subparsers(dest="db_command", metavar="{stats,export,import,clear,repair}")
    sub.required = True

    def leaf(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--latency-db", metavar="PATH", dest="latency_db", default=None,
                       help=f"database file (default: $ONNX_DEPTH_LATENCY_DB or {default_path()})")
        return p

    p = leaf("stats", "show entries, fingerprints, file size and schema version")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p = leaf("export", "write all entries to FILE (.json or .csv)")
    p.add_argument("file", metavar="FILE")
    p = leaf("import", "merge entries from FILE (.json or .csv); newer measurements win")
    p.add_argument("file", metavar="FILE")
    p = leaf("clear", "delete entries (all, or one fingerprint's)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--fingerprint", metavar="KEY", default=None, help="only this fingerprint key")
    p = leaf("repair", "salvage a damaged database into a fresh file (keeps a .corrupt backup)")
    p.add_argument("--force", action="store_true", help="rebuild even if the file looks healthy")
    db.set_defaults(func=run)
    _register_profile(subparsers)
    return db


def _register_profile(subparsers: "argparse._SubParsersAction[Any]") -> argparse.ArgumentParser:
    from ..planning.segments import DEFAULT_MAX_KERNEL, DEFAULT_MAX_LAYERS

    desc = ("Measure the latency of every candidate segment option of MODEL (after the lossless "
            "passes) and of the whole model, storing what the latency database does not hold yet.")
    p = subparsers.add_parser("profile", help="fill the latency database for MODEL's candidate segments",
                              description=desc)
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="onnxruntime intra-op threads (default 1; latencies are stored per thread count)")
    p.add_argument("--provider", default="CPUExecutionProvider", metavar="NAME",
                   help="onnxruntime execution provider (default CPUExecutionProvider)")
    p.add_argument("--latency-db", metavar="PATH", dest="latency_db", default=None,
                   help=f"database file (default: $ONNX_DEPTH_LATENCY_DB or {default_path()})")
    p.add_argument("--max-layers", type=int, default=DEFAULT_MAX_LAYERS, metavar="K",
                   help=f"longest segment, in linear layers (default {DEFAULT_MAX_LAYERS})")
    p.add_argument("--max-kernel", type=int, default=DEFAULT_MAX_KERNEL, metavar="K",
                   help=f"largest merged kernel extent (default {DEFAULT_MAX_KERNEL})")
    p.add_argument("--no-dense", dest="dense", action="store_false",
                   help="only conv chains (skip Gemm/MatMul chains)")
    p.add_argument("--input-shape", action="append", metavar="NAME:D1,D2,...", dest="input_shape",
                   help="concrete dims of a symbolic input to profile at (repeatable; default: batch 1)")
    p.add_argument("--refresh", action="store_true", help="re-measure entries already in the database")
    p.add_argument("--cluster", metavar="tcp://HOST:8786", default=None,
                   help="time the segments on the Dask workers of --target instead of here; rows are stored under "
                        "the workers' fingerprint (pip install onnx-depth[cluster])")
    p.add_argument("--target", metavar="NAME", default=None,
                   help="with --cluster: the target device (workers started with --resources \"onnxdepth-target-NAME=1\")")
    p.add_argument("--cluster-timeout", type=float, default=None, metavar="S",
                   help="with --cluster: seconds to reach the scheduler before exit 2 (default 10)")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bar, only the final count")
    p.set_defaults(func=run_profile)
    return p


def run_profile(args: argparse.Namespace) -> int:
    """Execute `profile`; returns the exit code. Bad models raise InputError (the CLI prints it)."""
    import onnxruntime as ort

    from ..planning.profiler import prepare, profile_candidates, progress_wanted
    from .fingerprint import current

    path = Path(args.latency_db) if getattr(args, "latency_db", None) else default_path()
    quiet = bool(getattr(args, "quiet", False))
    if args.threads < 1:
        return _err_profile(f"--threads must be >= 1, got {args.threads}")
    if args.max_layers < 1 or args.max_kernel < 1:
        return _err_profile("--max-layers and --max-kernel must be >= 1")
    cluster, target = getattr(args, "cluster", None), getattr(args, "target", None)
    if (cluster is None) != (target is None):
        return _err_profile("--cluster and --target go together: --cluster tcp://HOST:8786 --target NAME")
    available = ort.get_available_providers()
    if cluster is None and args.provider not in available:
        return _err_profile(f"provider {args.provider!r} is not available; one of {', '.join(available)}")
    remote = None
    try:
        if cluster is not None:  # onnx_depth.cluster imports dask: only with --cluster
            from ..cluster import DEFAULT_TIMEOUT_S, open_cluster

            timeout = getattr(args, "cluster_timeout", None)
            remote = open_cluster(cluster, target, provider=args.provider, threads=args.threads,
                                  timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout)
        fp = remote.fingerprint if remote is not None else current(provider=args.provider, threads=args.threads)
        cands = prepare(args.model, max_layers=args.max_layers, max_kernel=args.max_kernel, dense=args.dense,
                        input_shapes=getattr(args, "input_shape", None))
        if not quiet:
            print(f"{args.model}: {len(cands.options)} candidate options in {len(cands.chains)} chains, "
                  f"{len(cands.unique())} distinct segment models, {len(cands.cuts())} segment boundaries "
                  "to price, and the whole model")
            print(f"fingerprint {fp.key()}: {fp.describe()}")
            if remote is not None:
                print(f"measuring on {remote.target.describe()} via {remote.address}")
        with LatencyStore(path) as store:
            res = profile_candidates(cands, store, fp, refresh=args.refresh, progress=progress_wanted(quiet),
                                     measure=None if remote is None else remote.timer.measure_group)
    except LatencyDBError as e:
        return _err_profile(str(e))
    except Exception as e:  # noqa: BLE001 - onnxruntime refusing the INPUT model at the profiled shapes
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return _err_profile(f"onnxruntime cannot run {args.model} at the shapes it is profiled at "
                            f"(symbolic dims are set to 1): {first[:300]}")
    finally:
        if remote is not None:
            remote.close()
    if not quiet:
        floors = sorted(e.floor_ms for e in res.entries.values() if e.floor_ms is not None)
        if floors:
            print(f"call overhead (floor) median {floors[len(floors) // 2] * 1000:.1f} us per run, "
                  "subtracted from segment latencies in planning")
        whole = res.whole
        if whole is not None:
            print(f"whole model: {whole.median_ms:.3f} ms median")
        print(f"database: {path} ({res.seconds:.1f} s)")
    print(res.summary())
    return 0


def _err_profile(msg: str) -> int:
    print(f"onnx-depth profile: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


def _err(msg: str) -> int:
    print(f"onnx-depth db: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


def _stats(path: Path, as_json: bool) -> int:
    if not path.exists():
        print(f"no latency database at {path} (0 entries)")
        return 0
    with LatencyStore(path, create=False) as s:
        st = s.stats()
    if as_json:
        print(json.dumps(st, indent=1, sort_keys=True))
        return 0
    print(f"latency database: {st['path']}")
    print(f"schema version:   {st['schema_version']}")
    print(f"size:             {st['file_bytes'] + st['wal_bytes']} bytes")
    print(f"entries:          {st['entries']} in {st['fingerprints']} fingerprint(s)")
    for key, info in st["per_fingerprint"].items():
        d = info["details"]
        what = (f"{d.get('cpu_model', '?')}, ORT {d.get('ort_version', '?')}, {d.get('provider', '?')}, "
                f"{d.get('threads', '?')} thread(s), opt={d.get('optimization', '?')}") if d else "(no details)"
        print(f"  {key}  {info['entries']:6d}  {what}")
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run(args: argparse.Namespace) -> int:
    """Execute a parsed `db` command; returns the exit code."""
    path = Path(args.latency_db) if getattr(args, "latency_db", None) else default_path()
    cmd = getattr(args, "db_command", None)
    try:
        if cmd == "stats":
            return _stats(path, bool(getattr(args, "json", False)))
        if cmd == "export":
            with LatencyStore(path, create=False) as s:
                n = s.export(args.file)
            print(f"exported {n} entries to {args.file}")
            return 0
        if cmd == "import":
            with LatencyStore(path) as s:
                n = s.import_(args.file)
            print(f"imported {n} new or newer entries from {args.file} into {path}")
            return 0
        if cmd == "clear":
            if not path.exists():
                print(f"no latency database at {path}; nothing to clear")
                return 0
            with LatencyStore(path, create=False) as s:
                fp = args.fingerprint
                n = sum(1 for _ in s.entries(fp)) if fp else int(s.stats()["entries"])
                scope = f"fingerprint {fp}" if fp else "all fingerprints"
                if not args.yes and not _confirm(f"Delete {n} entries ({scope}) from {path}?"):
                    return _err(f"refusing to delete {n} entries ({scope}) without --yes")
                deleted = s.clear(fp)
            print(f"deleted {deleted} entries ({scope}) from {path}")
            return 0
        if cmd == "repair":
            result = repair(path, force=bool(getattr(args, "force", False)))
            print(result.summary())
            return 0
        return _err(f"unknown db command {cmd!r}")
    except LatencyDBError as e:
        return _err(str(e))
    except OSError as e:
        return _err(f"{e.filename or path}: {e.strerror or e}")
