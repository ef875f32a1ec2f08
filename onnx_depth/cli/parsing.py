"""The argparse pieces every subcommand shares: the parser that fails in one line with exit 2,
and `-q` accepted on every subcommand."""

from __future__ import annotations

import argparse

EXIT_ERROR = 2  # bad input or usage (errors.OnnxDepthError.exit_code)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def quiet_everywhere(parser: argparse.ArgumentParser) -> None:
    """`-q` on every subcommand too (`onnx-depth optimize -q ...` = `onnx-depth -q optimize ...`):
    a subcommand's -q never resets the global one (its default is SUPPRESS)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in dict.fromkeys(action.choices.values()):
            quiet = [a for a in child._actions if "-q" in a.option_strings]
            if quiet:
                quiet[0].default = argparse.SUPPRESS
            else:
                child.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                   help="print only errors, warnings and the final result")
            quiet_everywhere(child)
