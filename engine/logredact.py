"""Keep file paths and the names in them out of log files: sites often name scan folders after patients.

The user sees full messages on screen (their own machine, their own files); what is written to a log that
may be sent to support gets every path replaced by ``<path:xxxxxxxx>``, a short hash that still lets two
lines about the same file be matched up.

Two layers, because a name like ``DOE^JOHN 12345`` holds spaces and carets that no pattern can tell from
the words around it:

* every path the product opens or writes is registered (``remember``: scans, models, output folders); the
  formatter replaces each registered path wherever it appears, and also its file and folder names alone as
  whole words, whatever characters they hold (longest first). A plain lower-case word under eight letters
  (``mask``, ``empty``, ``normals``) is not taken for a name, or every sentence using it would be garbled;
  names of people and IDs carry capitals, digits or separators;
* anything else that looks like a path (a separator inside a token or a quoted string) is replaced too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from pathlib import Path

# A quoted string that contains a path separator (repr() of a path, possibly with spaces in it)… An apostrophe
# inside a word ("a result's dicom/ folder … the PACS's own tools") neither opens nor closes one.
_QUOTED = re.compile(r"""(?<!\w)(['"])((?:(?!\1).)*[\\/](?:(?!\1).)*)\1(?!\w)""")
# …or a bare token with a separator: /a/b, ./a, C:\a\b, \\server\share, a/b.dcm, file:///a.
_BARE = re.compile(r"""(?:(?<![\w.])[A-Za-z]:|\b[\w.~-]+:/)?(?:[\w.~$%+^-]*[\\/])+[\w.~$%+^-]*""")
# A URL: its scheme, host and port say which server (never whose scan); its path may hold study UIDs.
_URL = re.compile(r"""\b([A-Za-z][A-Za-z0-9+.-]*://(?:[\w.-]+(?::\d+)?)?)(/[^\s'"<>]*)?""")
#: A URL path kept as it is: one plain lower-case word, a page of a server (``/status``, ``/dicom-web``).
_PLAIN_URL_PATH = re.compile(r"(?:/[a-z-]*/?)?")
#: Names too common to be anyone's: never redacted on their own (a path holding them still is, whole).
_GENERIC = frozenset({"", ".", "..", "data", "home", "tmp", "scans", "scan", "dicom", "images", "out", "output",
                      "results", "models", "model", "users", "user", "mnt", "media", "var", "private",
                      # the product's own file names: naming no one, and words its log lines use
                      "heatmap.nii.gz", "mask.nii.gz", "mask_scr.nii.gz", "mask_scr", "scores.csv", "manifest.json",
                      "bundle.json", "weights.safetensors", "metrics.json", "metrics.csv", "metrics.md",
                      "viewer.log", "cases.sqlite", "active.json", "recent.json",
                      # the product's own folders (its cache and config: ``…/anomalens/samples``); "anomalens"
                      # taken for a name turned every "anomalens: …" progress line into "<path:…>: …"
                      "anomalens", "samples", "cache", "config", "profiles", "site-profiles"})
#: Folder levels above a file whose names are redacted on their own (a patient folder sits a few levels up:
#: ``DOE^JOHN 12345/study/series/IM0001.dcm``).
ANCESTORS = 6

_lock = threading.Lock()
_paths: set[str] = set()
_names: set[str] = set()
_pattern: re.Pattern[str] | None = None


def token(text: str) -> str:
    """The placeholder for a path or a name: the same text always gives the same token."""
    return f"<path:{hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()[:8]}>"


def remember(path: str | os.PathLike[str] | None) -> None:
    """Register a path the product touched, so logs never show it, its parents' names or its file name."""
    if path is None:
        return
    text = os.fspath(path)
    if not text or text.startswith("sample:"):
        return
    p = Path(text).expanduser()
    items = {text, str(p)}
    try:
        items.add(str(p.resolve()))
    except (OSError, RuntimeError):
        pass
    parts = [p.name, p.name.split(".")[0], *(a.name for a in list(p.parents)[:ANCESTORS])]
    names = {x for x in parts if _distinctive(x)}
    global _pattern
    with _lock:
        if items - _paths or names - _names:
            _paths.update(items)
            _names.update(names)
            _pattern = None


def _distinctive(name: str) -> bool:
    """Whether a file or folder name could identify someone (not a generic or plain lower-case short word)."""
    if len(name) < 3 or name.lower() in _GENERIC or re.fullmatch(r"\d+(?:\.\d+)+", name):
        return False  # generic words, and DICOM UIDs (a PACS cache folder is named by them: no names in them)
    return len(name) >= 8 or not re.fullmatch(r"[a-z]+", name)


def forget_all() -> None:
    """Drop every registered path (tests)."""
    global _pattern
    with _lock:
        _paths.clear()
        _names.clear()
        _pattern = None


def _registered() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and (_paths or _names):
            alternatives = [(k, re.escape(k)) for k in _paths]
            alternatives += [(k, rf"(?<![A-Za-z0-9]){re.escape(k)}(?![A-Za-z0-9])") for k in _names - _paths]
            _pattern = re.compile("|".join(rx for _, rx in sorted(alternatives, key=lambda a: len(a[0]), reverse=True)))
        return _pattern


def redact_paths(text: str) -> str:
    """``text`` with every registered path or name, and every path-like token, replaced by a stable placeholder.

    A URL keeps its scheme, host and port (which server; ``https://`` alone stays as it is) and loses its path.
    """
    known = _registered()
    if known is not None:
        text = known.sub(lambda m: token(m.group(0)), text)
    urls: list[str] = []

    def keep_server(m: re.Match[str]) -> str:
        path = m.group(2) or ""
        urls.append(m.group(1) + (path if _PLAIN_URL_PATH.fullmatch(path) or path.startswith("<path:")
                                  else token(path)))
        return f"\x00{len(urls) - 1}\x00"  # out of the path patterns' way until they have run

    if "\x00" not in text:
        text = _URL.sub(keep_server, text)
    text = _QUOTED.sub(lambda m: m.group(1) + token(m.group(2)) + m.group(1)
                       if not m.group(2).startswith("<path:") else m.group(0), text)
    text = _BARE.sub(lambda m: token(m.group(0)) if _is_path(m.group(0)) else m.group(0), text)
    return re.sub("\x00(\\d+)\x00", lambda m: urls[int(m.group(1))], text)


#: DICOM UIDs joined by "/" (a ``pacs:STUDY/SERIES`` spec, or its ``STUDY/SERIES_UID`` form in a hint): no names.
_UID_PATH = re.compile(r"(?:\d+(?:\.\d+)*|[A-Z_]+)(?:/(?:\d+(?:\.\d+)*|[A-Z_]+))+/?")


#: Word pairs the product's own messages write with a slash: they name no one and are never paths.
_WORD_PAIRS = frozenset({"input/output", "dice/precision", "nan/inf", "position/orientation", "bmad/mvtec",
                         "dice_scr/precision_scr", "s/slice", "show/hide", "window/level", "centre/width",
                         "positive/negative", "and/or", "w/l"})


def _is_path(token_text: str) -> bool:
    """Whether a token with a separator is a path.

    Something besides digits is needed (``epoch 3/30`` is progress); DICOM UIDs and the product's own word
    pairs are not paths either (``input/output error`` read ``input<path:…> error``).
    """
    return (bool(re.search(r"[\\/]", token_text)) and bool(re.search(r"[^\d\\/]", token_text))
            and not _UID_PATH.fullmatch(token_text) and token_text.lower() not in _WORD_PAIRS)


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output, traceback included, has its paths redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_paths(super().format(record))
