"""The ``anomalens`` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    from anomalens.engine.cli.main import main as _main

    code = _main(argv)
    if argv is None:
        sys.exit(code)
    return code
