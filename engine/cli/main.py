"""``anomalens``: one entry point with sub-commands, ``--json`` for machine-readable output.

Global options (``-v``, ``--threads``, ``--nan``) go before or after the sub-command; ``--self-test`` is an alias of
the ``self-test`` sub-command. Results go to stdout, progress and errors to stderr (``progressbar``). Every
user-caused failure is an ``AnomaLensError``: printed as one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import AnomaLensError, Cancelled
from ..logredact import RedactingFormatter, redact_paths

log = logging.getLogger("anomalens")

Handler = Callable[[argparse.Namespace], Any]


def emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    """Print ``data`` as JSON with ``--json``, else the human-readable ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text if text is not None else json.dumps(data, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    """The ``anomalens`` parser: global options, then one sub-command per ``cmd_*`` module.

    ``-v`` and ``--threads`` are accepted before or after the sub-command: people append options to the end
    of a command they recall from history, and installers call ``anomalens --self-test --threads 1``. The
    copies in the sub-commands' shared parent default to ``SUPPRESS``, so they set the value only when given
    and never overwrite one given before the sub-command with a default.
    """
    from .. import __version__
    from . import cmd_model, cmd_pacs, cmd_samples, cmd_scan, cmd_selftest

    parser = argparse.ArgumentParser(prog="anomalens", description="Unsupervised anomaly detection for medical scans.")
    parser.add_argument("--version", action="version", version=f"anomalens {__version__}")
    _add_global_options(parser, verbose=False, threads=None)
    # Never parsed: _self_test_alias turns it into the sub-command first; listed so that --help shows it.
    parser.add_argument("--self-test", action="store_true",
                        help="same as the self-test command (options may follow: --self-test --threads 1 --json)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    _add_global_options(common, verbose=argparse.SUPPRESS, threads=argparse.SUPPRESS, nan=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (cmd_scan, cmd_samples, cmd_model, cmd_pacs, cmd_selftest):
        module.register(sub, common)
    for name in ("cmd_eval", "cmd_demo"):
        try:
            module = __import__(f"anomalens.engine.cli.{name}", fromlist=["register"])
        except ImportError:
            continue
        module.register(sub, common)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, verbose: Any, threads: Any, nan: Any = None) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=verbose, help="log progress details")
    parser.add_argument("--threads", default=threads, metavar="N",
                        help="CPU threads for torch (default: $ANOMALENS_THREADS, else one per core); "
                             "1 is often fastest on a machine shared with other jobs")
    parser.add_argument("--nan", choices=("refuse", "clean"), default=nan,
                        help="scans with NaN/inf voxels: refuse them (default; $ANOMALENS_NAN) or replace those "
                             "voxels by the scan's lowest value and say so")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(_self_test_alias(sys.argv[1:] if argv is None else argv))
    # Logs outlive the terminal (batch jobs redirect them to files): no file paths, which may name patients.
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    # our own loggers follow -v even where the root logger was configured before (an embedding program)
    logging.getLogger("anomalens").setLevel(logging.INFO if args.verbose else logging.NOTSET)
    if not args.verbose:
        # dask.distributed sets its own loggers to INFO when it is imported (a batch printed 24 lines of
        # scheduler chatter without -v); its config variable reaches the worker processes too
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    nan_before = os.environ.get("ANOMALENS_NAN")
    if args.nan:  # read by every reader, here and in batch workers (other processes inherit it)
        os.environ["ANOMALENS_NAN"] = args.nan
    try:
        from ..device import configure_threads

        args.threads = configure_threads(args.threads)  # checked once; commands read the resolved count
        result = args.handler(args)
    except Cancelled:
        print("anomalens: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt as exc:  # a command may say what was left half done and how to finish it
        print("anomalens: interrupted" + (f": {_shown(args, str(exc.args[0]))}" if exc.args else ""),
              file=sys.stderr)
        return 130
    except AnomaLensError as exc:
        print(f"anomalens: error: {_shown(args, str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine refused (disk, permissions, a vanished file): the user's to fix, in one line
        from ..fileio import describe_os_error

        where = f" ({Path(exc.filename).name})" if getattr(exc, "filename", None) else ""
        print(f"anomalens: error: {_shown(args, describe_os_error(exc) + where)}", file=sys.stderr)
        return 2
    finally:  # main() may run again in this process (tests, an embedding script): the option was this run's
        if args.nan:
            if nan_before is None:
                os.environ.pop("ANOMALENS_NAN", None)
            else:
                os.environ["ANOMALENS_NAN"] = nan_before
    return int(result or 0)


def _shown(args: argparse.Namespace, text: str) -> str:
    """An error line as printed: paths and the names in them as ``<path:…>`` tokens unless ``--keep-paths``.

    stderr of a batch job or a cron line is a log file: "…/Smith_Anna.nii.gz is an empty file" put the patient in
    it, while the batch manifest already tokenised the same error.
    """
    if getattr(args, "keep_paths", False):
        return text
    shown = redact_paths(text)
    if shown != text and hasattr(args, "keep_paths"):  # the command can show them: say how
        shown += " (paths shown as <path:…> tokens; --keep-paths shows them)"
    return shown


def _self_test_alias(argv: Sequence[str]) -> list[str]:
    """``anomalens [global options] --self-test [options]`` is ``anomalens [global options] self-test [options]``.

    Installers and packagers conventionally probe a bundle with a flag, not a sub-command; the flag is
    rewritten before parsing because argparse requires the sub-command. Only a ``--self-test`` before the
    sub-command is the alias; the value of a global option (``--threads 1``) is not taken for a sub-command.
    """
    out = list(argv)
    i = 0
    while i < len(out):
        token = out[i]
        if token == "--self-test":
            out[i] = "self-test"
            break
        if not token.startswith("-") or token == "--":
            break
        i += 2 if token in _GLOBAL_VALUE_OPTIONS else 1
    return out


#: Global options that take their value as the next argument.
_GLOBAL_VALUE_OPTIONS = frozenset({"--threads", "--nan"})
