"""Named PACS profiles (``anomalens pacs add``), kept in the user's config folder, and their secrets.

A profile says where a DICOMweb service is and how to trust it: URL, user name, kind of credential, a CA
bundle for a site's own certificate authority, and a time limit. It never holds a password or token: those
come from an environment variable (``ANOMALENS_PACS_<NAME>_PASSWORD``, else ``ANOMALENS_PACS_PASSWORD``;
``…_TOKEN`` for bearer tokens), which is what services, batch jobs and tests use, or from the operating
system's keyring (``anomalens pacs login NAME`` stores it there). Never from the command line, where
``ps`` and the shell history would show it, and never in the config file, logs or manifests.

TLS certificates are verified unless a profile says ``insecure`` (a test server; ``pacs add`` warns).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..paths import config_dir

PROFILES_FILE = "pacs.json"
PROFILES_VERSION = 1
AUTH_KINDS = ("none", "basic", "bearer")
DEFAULT_TIMEOUT_S = 30.0
#: The keyring service under which ``pacs login`` stores a profile's secret.
KEYRING_SERVICE = "anomalens-pacs"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class PacsProfile:
    """Where a DICOMweb service is and how to talk to it (no secret: see ``resolve_secret``)."""

    name: str
    url: str
    user: str | None = None
    auth: str = "none"
    ca_bundle: str | None = None
    insecure: bool = False
    timeout: float = DEFAULT_TIMEOUT_S
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def host(self) -> str:
        """``host:port`` of the URL, for messages (the URL holds no credentials: ``check_url``)."""
        return urlsplit(self.url).netloc

    @property
    def secret_kind(self) -> str:
        return "token" if self.auth == "bearer" else "password"

    def env_names(self) -> tuple[str, str]:
        """The environment variables a secret is read from, the profile's own first."""
        kind = "TOKEN" if self.auth == "bearer" else "PASSWORD"
        key = re.sub(r"[^A-Z0-9]", "_", self.name.upper())
        return f"ANOMALENS_PACS_{key}_{kind}", f"ANOMALENS_PACS_{kind}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data


def check_name(name: str) -> str:
    """A profile name: a letter, then letters, digits, ``-`` or ``_`` (it becomes part of variable names)."""
    if not _NAME.match(name or ""):
        raise ConfigError(f"bad PACS name {name!r}: use a letter, then letters, digits, '-' or '_' (at most 32)")
    return name


def check_url(url: str) -> str:
    """The DICOMweb base URL without a trailing slash; refuses credentials, queries and other schemes."""
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the PACS URL must start with https:// or http:// and name a host, got {text!r}")
    if parts.username or parts.password:
        raise ConfigError("the PACS URL must not hold a user name or password: give --user, and keep the password "
                          "in the OS keyring ('anomalens pacs login') or in ANOMALENS_PACS_<NAME>_PASSWORD")
    if parts.query or parts.fragment:
        raise ConfigError("the PACS URL must be the DICOMweb base address, without '?' or '#' parts")
    return text.rstrip("/")


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _path() -> Path:
    return config_dir() / PROFILES_FILE


def _read() -> dict[str, Any]:
    path = _path()
    if not path.exists():
        return {"version": PROFILES_VERSION, "default": None, "profiles": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the PACS settings file {path.name} in the config folder is unreadable ({exc}); "
                          "remove it and add the profiles again") from exc
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ConfigError(f"the PACS settings file {path.name} in the config folder is damaged; remove it and add "
                          "the profiles again")
    return data


def _write(data: dict[str, Any]) -> None:
    data["version"] = PROFILES_VERSION
    atomic_write_text(_path(), json.dumps(data, indent=2, sort_keys=True) + "\n")


def _profile(name: str, raw: dict[str, Any]) -> PacsProfile:
    known = {k: raw[k] for k in ("url", "user", "auth", "ca_bundle", "insecure", "timeout") if k in raw}
    extra = {k: v for k, v in raw.items() if k not in known and k != "name"}
    return PacsProfile(name=name, extra=extra, **known)


def load_profiles() -> dict[str, PacsProfile]:
    """Every saved profile by name."""
    return {name: _profile(name, raw) for name, raw in sorted(_read()["profiles"].items())}


def default_name() -> str | None:
    """The default profile: the one marked so, or the only one."""
    data = _read()
    if data.get("default") in data["profiles"]:
        return str(data["default"])
    return next(iter(data["profiles"])) if len(data["profiles"]) == 1 else None


def get_profile(name: str | None = None) -> PacsProfile:
    """A profile by name, or the default one.

    Raises:
        ConfigError: no such profile, none configured, or several and no default.
    """
    profiles = load_profiles()
    if name is None:
        if not profiles:
            raise ConfigError("no PACS is configured: add one with 'anomalens pacs add NAME --url URL'")
        name = default_name()
        if name is None:
            raise ConfigError(f"several PACS are configured ({', '.join(profiles)}) and none is the default: give "
                              "--pacs NAME, or mark one with 'anomalens pacs add NAME --url URL --default'")
    if name not in profiles:
        known = f"; configured: {', '.join(profiles)}" if profiles else "; add it with 'anomalens pacs add'"
        raise ConfigError(f"no PACS named {name!r}{known}")
    return profiles[name]


def make_profile(name: str, url: str, *, user: str | None = None, token: bool = False, ca_bundle: str | None = None,
                 insecure: bool = False, timeout: float | None = None) -> PacsProfile:
    """A checked profile from the options of ``pacs add`` (nothing is saved)."""
    check_name(name)
    if token and user:
        raise ConfigError("give either --user (a password) or --token (a bearer token), not both")
    if insecure and ca_bundle:
        raise ConfigError("--insecure turns certificate checks off; --ca-bundle says whom to trust: give one")
    bundle = None
    if ca_bundle:
        p = Path(ca_bundle).expanduser()
        if not p.is_file():
            raise ConfigError(f"the CA bundle {ca_bundle} is not a file")
        bundle = str(p.resolve())
    limit = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
    if not limit > 0:
        raise ConfigError("--timeout must be a positive number of seconds")
    return PacsProfile(name=name, url=check_url(url), user=user or None,
                       auth="bearer" if token else ("basic" if user else "none"), ca_bundle=bundle,
                       insecure=bool(insecure), timeout=limit)


def save_profile(profile: PacsProfile, default: bool = False) -> None:
    """Add or replace a profile; ``default`` makes it the one used without ``--pacs``."""
    check_name(profile.name)
    if profile.auth not in AUTH_KINDS:
        raise ConfigError(f"unknown PACS authentication {profile.auth!r}: one of {', '.join(AUTH_KINDS)}")
    data = _read()
    data["profiles"][profile.name] = {**profile.extra, **profile.to_dict()}
    data["profiles"][profile.name].pop("name", None)
    if default:
        data["default"] = profile.name
    _write(data)


def remove_profile(name: str) -> PacsProfile:
    """Forget a profile (and its keyring entry, where one can be removed); returns what was removed."""
    profile = get_profile(name)
    data = _read()
    del data["profiles"][name]
    if data.get("default") == name:
        data["default"] = None
    _write(data)
    try:
        import keyring

        keyring.delete_password(KEYRING_SERVICE, _keyring_user(profile))
    except Exception:  # no keyring, or nothing stored: nothing to forget
        pass
    return profile


def _keyring_user(profile: PacsProfile) -> str:
    return f"{profile.name}:{profile.user or profile.secret_kind}"


def secret_source(profile: PacsProfile) -> str:
    """Where this profile's secret would come from ("ANOMALENS_PACS_X_PASSWORD", "keyring", "none", "missing")."""
    if profile.auth == "none":
        return "none"
    for env in profile.env_names():
        if os.environ.get(env):
            return env
    try:
        return "keyring" if _keyring_get(profile) else "missing"
    except ConfigError:
        return "missing"


def resolve_secret(profile: PacsProfile) -> str | None:
    """The password or token for a profile: environment first, then the OS keyring; None when it needs none.

    Raises:
        ConfigError: the profile needs a secret and neither place has one (the message says how to give it,
            and why the keyring could not be asked when that is the reason).
    """
    if profile.auth == "none":
        return None
    for env in profile.env_names():
        value = os.environ.get(env)
        if value:
            return value
    why = ""
    try:
        value = _keyring_get(profile)
    except ConfigError as exc:
        value, why = None, f" ({exc})"
    if value:
        return value
    own, _ = profile.env_names()
    raise ConfigError(f"no {profile.secret_kind} for the PACS {profile.name!r}: set {own} in the environment, or "
                      f"store it in the OS keyring with 'anomalens pacs login {profile.name}'{why}")


def _keyring_get(profile: PacsProfile) -> str | None:
    try:
        import keyring

        return keyring.get_password(KEYRING_SERVICE, _keyring_user(profile))
    except Exception as exc:  # NoKeyringError, a locked or broken backend (D-Bus, KWallet): say so, go on
        raise ConfigError(f"the OS keyring is not available: {_short(exc)}") from exc


def store_secret(profile: PacsProfile, secret: str) -> None:
    """Put a profile's password or token in the OS keyring (``pacs login``).

    Raises:
        ConfigError: an empty secret, or no usable keyring (the message names the environment variable instead).
    """
    if profile.auth == "none":
        raise ConfigError(f"the PACS {profile.name!r} uses no credentials; add it again with --user or --token")
    if not secret:
        raise ConfigError(f"no {profile.secret_kind} given; nothing was stored")
    try:
        import keyring

        keyring.set_password(KEYRING_SERVICE, _keyring_user(profile), secret)
    except Exception as exc:
        own, _ = profile.env_names()
        raise ConfigError(f"could not store the {profile.secret_kind} in the OS keyring ({_short(exc)}); set {own} "
                          "in the environment of the programs that use this PACS instead") from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157].rsplit(" ", 1)[0] + " …"  # whole words ("non-recommend)")


def with_timeout(profile: PacsProfile, timeout: float | None) -> PacsProfile:
    """The profile with another time limit (None: unchanged)."""
    return profile if timeout is None else replace(profile, timeout=float(timeout))
