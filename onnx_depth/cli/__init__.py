"""Command line interface: a thin layer over onnx_depth.api. All argparse code lives here.

Exit codes: 0 ok, 1 --check found a mismatch, 2 bad input or usage, 3 latency budget infeasible,
4 internal error (a bug: please report it with the output of --debug), 141 the reader of stdout
went away (a closed pipe: quiet, like other command-line tools killed by SIGPIPE).

Warnings (`onnx_depth.diagnostics`) go to stderr, one line each, also under `-q`. `-q` is
accepted before or after the subcommand. After planning started, a failing `optimize` still
writes --report (and --plan-out): the evidence of what was tried.

One module per subcommand, each with `register(subparsers)` and the function it runs:
`analyze`, `optimize`, `demo`, `db` (the latency database), `profile` (fill it);
`parsing` holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from .. import diagnostics
from ..errors import OnnxDepthError
from ..version import __version__
from . import analyze, db, demo, optimize, profile
from .parsing import Parser, quiet_everywhere

log = logging.getLogger("onnx_depth")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="onnx-depth", description="Make ONNX models shallower and faster.")
    p.add_argument("--version", action="version", version=f"onnx-depth {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final result")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    analyze.register(sub)
    optimize.register(sub)
    demo.register(sub)
    db.register(sub)
    profile.register(sub)
    quiet_everywhere(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = bool(getattr(args, "quiet", False))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="onnx-depth: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    message = None
    try:
        with diagnostics.recording() as caught:
            try:
                code, message = _run(args)
            finally:  # warnings first (also with --debug), then the one-line error
                diagnostics.print_warnings(caught)
        if message:
            print(message, file=sys.stderr)
        return code
    except BrokenPipeError:
        return _broken_pipe()


def _run(args: argparse.Namespace) -> tuple[int, str | None]:
    """(exit code, one-line error message or None)."""
    try:
        return int(args.func(args) or 0), None
    except BrokenPipeError:
        raise
    except OnnxDepthError as e:
        if args.debug:
            raise
        return e.exit_code, f"onnx-depth: error: {e}"
    except KeyboardInterrupt:
        return 130, "onnx-depth: interrupted"
    except MemoryError:
        if args.debug:
            raise
        return 2, "onnx-depth: error: out of memory (the model or its inputs are too large for this machine)"
    except OSError as e:  # the environment (files, permissions, disk), not a bug
        if args.debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return 2, f"onnx-depth: error: {where}{e.strerror or e}"
    except Exception as e:  # noqa: BLE001 - never a traceback without --debug
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return 4, f"onnx-depth: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)"


def _broken_pipe() -> int:
    """stdout's reader went away: exit quietly (128 + SIGPIPE, like tools the signal kills);
    point stdout at /dev/null so the interpreter's final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return 141


__all__ = ["build_parser", "main"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
