"""The ``anomalens`` command line."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    from .main import main as _main

    try:
        code = _main(argv)
    except BrokenPipeError:
        # `anomalens eval --json | head` closed our stdout early: that is the reader's choice, not an
        # error worth a traceback. Point stdout at devnull so the interpreter's final flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    if argv is None:
        sys.exit(code)
    return code
