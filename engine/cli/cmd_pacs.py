"""``anomalens pacs``: PACS profiles, and finding, pulling and pushing over DICOMweb.

Scoring a study on a PACS needs no command of its own: ``anomalens score --model M pacs:STUDY_UID --out D
--push`` pulls, scores and stores the result back (``cmd_model``). Passwords and tokens are never options:
``pacs login`` asks for one and keeps it in the OS keyring, or the environment holds it
(``ANOMALENS_PACS_<NAME>_PASSWORD``); see docs/pacs.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..logredact import remember
from .main import emit
from .progressbar import terminal_progress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pacs", parents=[common], help="PACS profiles; find, pull and push studies over DICOMweb",
                       description="Talk to a PACS or cloud DICOM store over DICOMweb (QIDO-RS, WADO-RS, STOW-RS). "
                                   "Score a study on it with: anomalens score --model M pacs:STUDY_UID --out D --push")
    psub = p.add_subparsers(dest="pacs_command", metavar="ACTION")
    psub.required = True

    a = psub.add_parser("add", parents=[common], help="add or replace a PACS profile (no password here: see login)")
    a.add_argument("name", metavar="NAME", help="a short name: a letter, then letters, digits, - or _")
    a.add_argument("--url", required=True, help="the DICOMweb base URL, e.g. https://pacs.example.org/dicom-web")
    who = a.add_mutually_exclusive_group()
    who.add_argument("--user", default=None, help="user name for HTTP basic authentication")
    who.add_argument("--token", action="store_true",
                     help="authenticate with a bearer token (cloud DICOM stores) from ANOMALENS_PACS_<NAME>_TOKEN or "
                          "the keyring")
    a.add_argument("--ca-bundle", default=None, metavar="FILE",
                   help="PEM file of the certificate authorities to trust (a site's own CA)")
    a.add_argument("--insecure", action="store_true",
                   help="do not verify the server's TLS certificate (test servers only)")
    a.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds to wait for each answer (30)")
    a.add_argument("--default", action="store_true", help="use this PACS when --pacs is not given")
    a.set_defaults(handler=run_add)

    ls = psub.add_parser("list", parents=[common], help="list the PACS profiles")
    ls.set_defaults(handler=run_list)

    rm = psub.add_parser("remove", parents=[common], help="remove a PACS profile (and its keyring entry)")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(handler=run_remove)

    lg = psub.add_parser("login", parents=[common], help="ask for a profile's password or token and keep it in the "
                                                         "OS keyring")
    lg.add_argument("name", metavar="NAME")
    lg.set_defaults(handler=run_login)

    t = psub.add_parser("test", parents=[common], help="check the address, the credentials and the DICOMweb root")
    _pacs_option(t)
    t.set_defaults(handler=run_test)

    f = psub.add_parser("find", parents=[common], help="find studies and list their series",
                        description="Studies newest first, each with its series (modality, description, images). "
                                    "Patient names are never shown.")
    _pacs_option(f)
    f.add_argument("--patient-id", default=None, metavar="ID", help="only this patient ID")
    f.add_argument("--modality", default=None, help="only studies with this modality (MR, CT, …), and only those "
                                                    "series")
    f.add_argument("--since", default=None, metavar="DATE", help="studies on or after DATE (YYYY-MM-DD)")
    f.add_argument("--until", default=None, metavar="DATE", help="studies on or before DATE (YYYY-MM-DD)")
    f.add_argument("--description", default=None, metavar="PATTERN",
                   help="only series whose description matches (shell wildcards, case-insensitive)")
    f.add_argument("--limit", type=int, default=None, metavar="N", help="at most N studies")
    f.set_defaults(handler=run_find)

    pl = psub.add_parser("pull", parents=[common], help="bring a study's image series (or one series) into the cache",
                         description="Resumable: images already in the cache are not fetched again; an interrupted "
                                     "pull keeps what it received. Cache folders are named by UID only.")
    _pacs_option(pl)
    pl.add_argument("study", metavar="STUDY_UID")
    pl.add_argument("--series", default=None, metavar="UID", help="only this series")
    pl.set_defaults(handler=run_pull)

    ps = psub.add_parser("push", parents=[common], help="store DICOM files on the PACS (e.g. a result's dicom/ folder "
                                                        "after a refused push); what it has already is skipped")
    _pacs_option(ps)
    ps.add_argument("files", metavar="FILE", nargs="+", help="DICOM files, or folders of them")
    ps.set_defaults(handler=run_push)


def _pacs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pacs", default=None, metavar="NAME", help="PACS profile (default: the default one)")


# -- profiles ---------------------------------------------------------------------------------------------------

def run_add(args: argparse.Namespace) -> int:
    from ..pacs.profiles import is_loopback, make_profile, save_profile, secret_source

    profile = make_profile(args.name, args.url, user=args.user, token=args.token, ca_bundle=args.ca_bundle,
                           insecure=args.insecure, timeout=args.timeout)
    save_profile(profile, default=args.default)
    notes = []
    if profile.url.startswith("http://") and not is_loopback(profile.url):
        notes.append("the URL is plain http: credentials and images cross the network unencrypted; use https")
    if profile.insecure:
        notes.append("TLS certificates will not be verified for this PACS: anyone on the path could pose as it")
    if profile.auth != "none" and secret_source(profile) == "missing":
        own, _ = profile.env_names()
        notes.append(f"no {profile.secret_kind} yet: run 'anomalens pacs login {profile.name}' or set {own}")
    for n in notes:
        print(f"anomalens: warning: {n}", file=sys.stderr)
    emit(args, {"saved": profile.to_dict(), "default": args.default, "warnings": notes},
         f"saved the PACS {profile.name!r} ({profile.url})" + (" as the default" if args.default else ""))
    return 0


def _secret_words(row: dict) -> str:
    """Where a profile's secret comes from, in words ("secret from missing" read as a place called missing)."""
    source = str(row.get("secret") or "")
    if source in ("", "missing"):
        return f"no secret yet: anomalens pacs login {row['name']}"
    return f"secret from {source}"


def run_list(args: argparse.Namespace) -> int:
    from ..pacs.profiles import default_name, load_profiles, secret_source

    profiles = load_profiles()
    default = default_name()
    rows = [{**p.to_dict(), "default": name == default, "secret": secret_source(p)} for name, p in profiles.items()]
    lines = [f"{'*' if r['default'] else ' '} {r['name']}: {r['url']}"
             + (f" (user {r['user']})" if r["user"] else "") + (f" [{r['auth']}, {_secret_words(r)}]"
                                                                if r["auth"] != "none" else "")
             + (" [TLS not verified]" if r["insecure"] else "") for r in rows]
    emit(args, rows, "\n".join(lines) if lines else "no PACS configured: add one with 'anomalens pacs add NAME --url "
                                                     "URL'")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from ..pacs.profiles import remove_profile

    profile = remove_profile(args.name)
    emit(args, {"removed": profile.name}, f"removed the PACS {profile.name!r}")
    return 0


def run_login(args: argparse.Namespace) -> int:
    import getpass

    from ..pacs.profiles import get_profile, store_secret

    profile = get_profile(args.name)
    if profile.auth == "none":
        raise ConfigError(f"the PACS {profile.name!r} uses no credentials; add it again with --user or --token")
    who = f"{profile.user}@{profile.host}" if profile.user else profile.host
    try:
        if sys.stdin is not None and not sys.stdin.isatty():
            # piped (echo … | anomalens pacs login NAME, a secrets manager): one line from stdin, as
            # `docker login --password-stdin` reads it; getpass printed Python warnings and read nothing
            secret = sys.stdin.readline().rstrip("\r\n")
        else:
            secret = getpass.getpass(f"{profile.secret_kind} for {who}: ")
    except (EOFError, KeyboardInterrupt):
        raise ConfigError(f"no {profile.secret_kind} given; nothing was stored") from None
    if not secret:
        raise ConfigError(f"no {profile.secret_kind} given; nothing was stored")
    store_secret(profile, secret)
    emit(args, {"stored": profile.name}, f"stored the {profile.secret_kind} for {profile.name!r} in the OS keyring")
    return 0


def run_test(args: argparse.Namespace) -> int:
    from ..pacs.client import PacsClient

    with PacsClient.open(args.pacs) as client:
        client.check()
        name, url = client.profile.name, client.profile.url
    emit(args, {"pacs": name, "url": url, "ok": True}, f"the PACS {name!r} at {url} answers")
    return 0


# -- find, pull, push ----------------------------------------------------------------------------------------

def run_find(args: argparse.Namespace) -> int:
    from ..pacs.client import PacsClient
    from ..pacs.query import find_studies, make_query

    query = make_query(modality=args.modality, since=args.since, until=args.until, patient_id=args.patient_id,
                       description=args.description, limit=args.limit)
    with PacsClient.open(args.pacs) as client, terminal_progress("searching the PACS") as progress:
        studies = find_studies(client, query, progress=progress)
        name = client.profile.name
    emit(args, {"pacs": name, "query": query.to_dict(), "studies": [s.to_dict() for s in studies]},
         "\n".join(_study_lines(studies)) if studies else f"no study on the PACS {name!r} matches")
    return 0


def _study_lines(studies: list[Any]) -> list[str]:
    lines = []
    for st in studies:
        day = f"{st.date[:4]}-{st.date[4:6]}-{st.date[6:8]}" if len(st.date) == 8 else (st.date or "no date")
        counts = f"{st.n_series if st.n_series is not None else len(st.series)} series"
        if st.n_instances is not None:
            counts += f", {st.n_instances} images"
        lines.append(f"{st.uid}  {day}  {'/'.join(st.modalities) or '?'}  {st.description or '(no description)'}  "
                     f"[{counts}]")
        for se in st.series:
            n = f"{se.n_instances} images" if se.n_instances is not None else "? images"
            num = f"#{se.number} " if se.number is not None else ""
            lines.append(f"    {se.uid}  {se.modality or '?'}  {num}{se.description or '(no description)'}  [{n}]")
    return lines


def run_pull(args: argparse.Namespace) -> int:
    from ..errors import EmptyInputError
    from ..pacs.cache import pull_series
    from ..pacs.client import PacsClient
    from ..pacs.query import check_uid, image_series, pick_series

    study = check_uid(args.study, "study UID")
    results = []
    with PacsClient.open(args.pacs) as client:
        if args.series:
            series = [pick_series(client, study, args.series)]
        else:
            series = image_series(client, study)
            if not series:
                raise EmptyInputError(f"study {study} holds no image series to pull")
        for k, s in enumerate(series):
            with terminal_progress(f"pulling series {k + 1}/{len(series)}") as progress:
                results.append(pull_series(client, study, s.uid, progress=progress))
    lines = [f"{r.folder}  ({r.n_instances} images: {r.downloaded} received, {r.reused} already cached)"
             for r in results]
    emit(args, {"series": [r.to_dict() for r in results]}, "\n".join(lines))
    return 0


def run_push(args: argparse.Namespace) -> int:
    from ..pacs.client import PacsClient
    from ..pacs.push import push_files

    files: list[Path] = []
    for item in args.files:
        remember(item)  # a file or folder name may name the patient: error lines show a token
        p = Path(item).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.glob("*.dcm") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{item} is neither a DICOM file nor a folder")
    for f in files:
        remember(f)
    if not files:
        raise ConfigError("no .dcm files to push in " + ", ".join(args.files))
    with PacsClient.open(args.pacs) as client, terminal_progress("pushing") as progress:
        pushed = push_files(client, files, progress=progress)
    emit(args, pushed.to_dict(), pushed.line())
    return 0
