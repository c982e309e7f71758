"""``anomalens``: one entry point with sub-commands, ``--json`` for machine-readable output.

Every user-caused failure is an ``AnomaLensError``: printed as one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import AnomaLensError, Cancelled
from ..logredact import RedactingFormatter

log = logging.getLogger("anomalens")

Handler = Callable[[argparse.Namespace], Any]


def emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    """Print ``data`` as JSON with ``--json``, else the human-readable ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text if text is not None else json.dumps(data, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import cmd_model, cmd_samples, cmd_scan, cmd_selftest

    parser = argparse.ArgumentParser(prog="anomalens", description="Unsupervised anomaly detection for medical scans.")
    parser.add_argument("--version", action="version", version=f"anomalens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--self-test", action="store_true", help="same as the self-test command")
    parser.add_argument("--threads", default=None, metavar="N",
                        help="CPU threads for torch (default: $ANOMALENS_THREADS, else one per core); "
                             "1 is often fastest on a machine shared with other jobs")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (cmd_scan, cmd_samples, cmd_model, cmd_selftest):
        module.register(sub, common)
    for name in ("cmd_eval", "cmd_demo"):
        try:
            module = __import__(f"anomalens.engine.cli.{name}", fromlist=["register"])
        except ImportError:
            continue
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(_self_test_alias(sys.argv[1:] if argv is None else argv))
    # Logs outlive the terminal (batch jobs redirect them to files): no file paths, which may name patients.
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        from ..device import configure_threads

        args.threads = configure_threads(args.threads)  # checked once; commands read the resolved count
        result = args.handler(args)
    except Cancelled:
        print("anomalens: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("anomalens: interrupted", file=sys.stderr)
        return 130
    except AnomaLensError as exc:
        print(f"anomalens: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


def _self_test_alias(argv: Sequence[str]) -> list[str]:
    """``anomalens [-v] --self-test [options]`` is ``anomalens [-v] self-test [options]``.

    Installers and packagers conventionally probe a bundle with a flag, not a sub-command; the flag is
    rewritten before parsing because argparse requires the sub-command.
    """
    out = list(argv)
    for i, token in enumerate(out):
        if token == "--self-test":
            out[i] = "self-test"
            break
        if not token.startswith("-"):
            break
    return out
