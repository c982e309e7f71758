"""Keep file paths out of log files: sites often name scan folders after patients.

The user sees full messages on screen (their own machine, their own files); what is written to a log
that may be sent to support gets every path-like token replaced by ``<path:xxxxxxxx>``, a short hash
that still lets two lines about the same file be matched up.
"""

from __future__ import annotations

import hashlib
import logging
import re

# A quoted string that contains a path separator (repr() of a path, possibly with spaces in it)…
_QUOTED = re.compile(r"""(['"])((?:(?!\1).)*[\\/](?:(?!\1).)*)\1""")
# …or a bare token with a separator: /a/b, ./a, C:\a\b, \\server\share, a/b.dcm, file:///a.
_BARE = re.compile(r"""(?:[A-Za-z]:|\b[\w.~-]+:/)?(?:[\w.~$%+-]*[\\/])+[\w.~$%+-]*""")


def _token(path: str) -> str:
    return f"<path:{hashlib.sha256(path.encode('utf-8', 'replace')).hexdigest()[:8]}>"


def redact_paths(text: str) -> str:
    """``text`` with every file-system path replaced by a stable placeholder."""
    text = _QUOTED.sub(lambda m: m.group(1) + _token(m.group(2)) + m.group(1), text)
    return _BARE.sub(lambda m: _token(m.group(0)) if _is_path(m.group(0)) else m.group(0), text)


def _is_path(token: str) -> bool:
    """A separator and something besides digits: ``epoch 3/30`` is progress, not a path."""
    return bool(re.search(r"[\\/]", token)) and bool(re.search(r"[^\d\\/]", token))


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output, traceback included, has its paths redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_paths(super().format(record))
