"""Errors that the CLI turns into one-line messages and exit codes.

Exit codes (documented in README):
  0 success, 1 check mismatch (--check), 2 bad input or usage, 3 budget infeasible.
"""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class OnnxDepthError(Exception):
    """Base class: a problem the user can act on. str(e) is the one-line message."""

    exit_code = 2


class InputError(OnnxDepthError):
    """The input model (or another input file) cannot be read or is not valid ONNX."""


class UnsupportedModel(OnnxDepthError):
    """The model is valid ONNX but uses something onnx-depth does not handle."""


class CheckFailed(OnnxDepthError):
    """The rewritten model does not reproduce the original's outputs."""

    exit_code = 1


class BudgetInfeasible(OnnxDepthError):
    """No plan meets the requested latency budget."""

    exit_code = 3
