"""Which package index to download from: the one pip is configured with, so a hospital mirror just works.

Sites that block the public internet run an internal PyPI mirror and point pip at it through
``PIP_INDEX_URL`` or ``index-url`` in a ``pip.conf``. We read the same settings, in pip's own order of
precedence, instead of asking for a second setting, and fall back to pip's built-in default only when
nothing is configured. We read the files ourselves rather than run ``pip config`` because a frozen
desktop build may have no pip, and a subprocess would be slow.
"""

from __future__ import annotations

import configparser
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: pip's built-in index; the only index host the product names.
DEFAULT_INDEX_URL = "https://pypi.org/simple/"

# pip reads the [global] section plus the section named after the command, the command's section winning
# whatever file it is in; a user who configured a mirror for ``pip install`` expects it here too, so
# [install] wins over [download], which wins over [global].
_SECTIONS = ("global", "download", "install")


@dataclass(frozen=True)
class IndexSource:
    """A package index URL and where that setting came from (for error messages)."""

    url: str
    origin: str


@dataclass(frozen=True)
class PipSettings:
    """The few pip settings a download needs, each with the place it was read from."""

    index_url: IndexSource
    extra_index_urls: tuple[IndexSource, ...] = ()
    cert: str | None = None
    proxy: str | None = None

    def indexes(self) -> list[IndexSource]:
        """The main index first, then the extra ones (as pip searches them), without duplicates."""
        seen: set[str] = set()
        out: list[IndexSource] = []
        for src in (self.index_url, *self.extra_index_urls):
            key = src.url.rstrip("/")
            if key not in seen:
                seen.add(key)
                out.append(src)
        return out


def _normalize_key(name: str) -> str:
    name = name.strip().lower().replace("_", "-")
    return name[2:] if name.startswith("--") else name


def pip_config_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The configuration files pip reads, lowest precedence first: global, user, site, ``PIP_CONFIG_FILE``.

    Mirrors pip's rules: ``PIP_CONFIG_FILE=os.devnull`` disables every file, and an existing
    ``PIP_CONFIG_FILE`` replaces the user files.
    """
    import platformdirs

    env = os.environ if environ is None else environ
    env_file = env.get("PIP_CONFIG_FILE")
    if env_file is not None and env_file == os.devnull:
        return []
    basename = "pip.ini" if sys.platform == "win32" else "pip.conf"
    files: list[Path] = []
    if sys.platform == "darwin":
        global_dirs = [platformdirs.site_data_dir("pip", appauthor=False)]
    elif sys.platform == "win32":
        global_dirs = [platformdirs.site_config_dir("pip", appauthor=False)]
    else:
        xdg = platformdirs.site_config_dir("pip", appauthor=False, multipath=True)
        global_dirs = [*xdg.split(os.pathsep), "/etc"]
    files += [Path(d) / basename for d in global_dirs if d]
    if not (env_file and Path(env_file).exists()):
        files.append(Path.home() / ("pip" if sys.platform == "win32" else ".pip") / basename)
        if sys.platform == "darwin":
            user_dir = Path(platformdirs.user_data_dir("pip", appauthor=False))
            if not user_dir.is_dir():
                user_dir = Path.home() / ".config" / "pip"
        else:
            user_dir = Path(platformdirs.user_config_dir("pip", appauthor=False, roaming=True))
        files.append(user_dir / basename)
    files.append(Path(sys.prefix) / basename)
    if env_file:
        files.append(Path(env_file))
    return files


def _read_file(path: Path) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        parser.read_string(text, source=str(path))
    except (OSError, configparser.Error) as exc:
        log.warning("ignoring unreadable pip configuration %s: %s", path, exc)
        return {}
    return {section: {_normalize_key(k): v for k, v in parser.items(section)}
            for section in _SECTIONS if parser.has_section(section)}


def read_pip_options(
    environ: Mapping[str, str] | None = None, config_files: Sequence[Path] | None = None
) -> dict[str, tuple[str, str]]:
    """Merge pip's files and ``PIP_*`` variables into ``{key: (value, origin)}`` as pip does.

    Within a section later files win; then [install] beats [download] beats [global] whichever file
    they came from; ``PIP_*`` variables beat every file.
    """
    env = os.environ if environ is None else environ
    files = pip_config_files(env) if config_files is None else list(config_files)
    sections: dict[str, dict[str, tuple[str, str]]] = {s: {} for s in _SECTIONS}
    for path in files:
        if path.is_file():
            for section, values in _read_file(path).items():
                for key, value in values.items():
                    sections[section][key] = (value, f"pip configuration {path} [{section}]")
    merged: dict[str, tuple[str, str]] = {}
    for section in _SECTIONS:
        merged.update(sections[section])
    for var, value in env.items():
        if var.startswith("PIP_") and value.strip():
            merged[_normalize_key(var[4:])] = (value, var)
    return merged


def pip_settings(
    environ: Mapping[str, str] | None = None, config_files: Sequence[Path] | None = None
) -> PipSettings:
    """The index URLs, CA bundle and proxy pip would use; pip's default index when none is set."""
    opts = read_pip_options(environ, config_files)
    index = IndexSource(DEFAULT_INDEX_URL, "pip's default index")
    if "index-url" in opts and opts["index-url"][0].strip():
        value, origin = opts["index-url"]
        index = IndexSource(value.strip(), origin)
    extras: tuple[IndexSource, ...] = ()
    if "extra-index-url" in opts:
        value, origin = opts["extra-index-url"]
        extras = tuple(IndexSource(u, origin) for u in value.split())
    cert = opts["cert"][0].strip() if "cert" in opts else None
    proxy = opts["proxy"][0].strip() if "proxy" in opts else None
    return PipSettings(index, extras, cert or None, proxy or None)


def discover_indexes(
    environ: Mapping[str, str] | None = None, config_files: Sequence[Path] | None = None
) -> list[IndexSource]:
    """Indexes to search, in order: ``PIP_INDEX_URL`` / ``index-url`` (or pip's default), then extras."""
    return pip_settings(environ, config_files).indexes()
