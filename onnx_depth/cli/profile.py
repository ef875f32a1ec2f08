"""`onnx-depth profile MODEL`: fill the latency database for MODEL's candidate segments.

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
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..cluster import DEFAULT_TIMEOUT_S, open_cluster
from ..errors import first_line
from ..latency_db import LatencyDBError, LatencyStore, current, default_path
from ..planning.profiler import prepare, profile_candidates, progress_wanted
from ..planning.segments import DEFAULT_MAX_KERNEL, DEFAULT_MAX_LAYERS
from .parsing import EXIT_ERROR


def register(subparsers: "argparse._SubParsersAction[Any]") -> argparse.ArgumentParser:
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
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute `profile`; returns the exit code. Bad models raise InputError (the CLI prints it)."""
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
        if cluster is not None:  # dask is imported only now (onnx_depth.cluster.connect)
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
        first = first_line(e)
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
