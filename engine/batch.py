"""Batch scoring of many studies on dask.distributed: a local cluster by default, any scheduler on request.

One task per study. Workers write each study's outputs into ``OUT/<study-id>/`` through a temporary folder
that is renamed into place, so a worker killed mid-write leaves no half result. Only the client writes
``OUT/manifest.json`` (atomically, after every result), so a crash of the client or of a worker loses at
most the studies still running; a rerun skips every study recorded as ``ok`` with the same model and its
files present, and retries the failed and missing ones. A failing study (corrupt file, unreadable folder)
is recorded with its error and never stops the others.

The same code runs on a laptop and on a cluster: point ``scheduler`` at a scheduler started by
dask-jobqueue, dask-kubernetes or dask-gateway (see ``docs/scale-out.md``); nothing here depends on where
workers run, only on them seeing the same paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .device import THREADS_ENV
from .errors import AnomaLensError, ConfigError, EmptyInputError
from .fileio import atomic_dir, atomic_write_text, ensure_folder
from .io.dicom import is_dicom_file
from .io.spec import split_spec
from .logredact import redact_paths, remember
from .progress import ProgressCallback, report

if TYPE_CHECKING:
    from .detectors import Detector

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
# Files in a folder of studies that are clearly not studies (notes, lists, previous outputs).
_NOT_STUDIES = (".txt", ".md", ".json", ".csv", ".log", ".yaml", ".yml", ".py")
# Suffixes of single-file scans: a folder holding one is a folder of studies, never a DICOM series.
_SCAN_FILES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Study:
    """One unit of work: a stable id (its output folder name) and the SPEC the workers read."""

    id: str
    spec: str


@dataclass
class BatchSummary:
    """What a batch run did; ``failed`` maps study id to its error message."""

    out: Path
    ok: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: Of ``ok``, the studies whose push stored nothing: the PACS held every object already.
    already_on_pacs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    @property
    def exit_code(self) -> int:
        """0 when every study has results, 1 when any failed (the others' results are kept)."""
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "manifest": str(self.out / MANIFEST), "ok": len(self.ok),
                "skipped": len(self.skipped), "failed": dict(self.failed),
                "already_on_pacs": len(self.already_on_pacs), "seconds": round(self.seconds, 3),
                "workers": self.workers}


# -- inputs ------------------------------------------------------------------------------------------------

#: Study folder names: a hash of the SPEC only, so no folder or file name (which may name a patient) is copied.
DEFAULT_NAME_PATTERN = "study-{hash}"


def study_id(spec: str, pattern: str = DEFAULT_NAME_PATTERN) -> str:
    """A filesystem-safe, stable output-folder name for a study: ``pattern`` with ``{hash}`` and ``{stem}``.

    ``{hash}`` is 12 hex digits of a SHA-256 of the whole SPEC (unique per file and slice selection);
    ``{stem}`` is the scan's file or folder name without its suffix (plus the selection), which sites may opt
    into (``--name-pattern '{stem}-{hash}'``) where names carry no patient data.
    """
    from .io.spec import PACS_PREFIX, SAMPLE_PREFIX, split_spec

    if "{hash}" not in pattern:
        raise ConfigError("--name-pattern must contain {hash}, so that two studies never share a folder")
    source, selection = split_spec(spec)
    if source.startswith(SAMPLE_PREFIX):
        stem = source[len(SAMPLE_PREFIX):]
    elif source.startswith(PACS_PREFIX):
        stem = source.rsplit(":", 1)[-1].rsplit("/", 1)[-1]  # the series (or study) UID: a PACS names no files
    else:
        name = Path(source.rstrip("/\\")).name
        lower = name.lower()
        for suffix in sorted((*_SCAN_FILES, ".dcm"), key=len, reverse=True):
            if lower.endswith(suffix):
                name = name[: -len(suffix)]
                break
        stem = name
    if selection:
        stem = f"{stem}_{selection}"
    digest = hashlib.sha256(spec.encode("utf-8")).hexdigest()[:12]
    try:
        text = pattern.format(hash=digest, stem=stem)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"--name-pattern may use {{hash}} and {{stem}} only: {exc}") from exc
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:96] or f"study-{digest}"


def _absolute_spec(spec: str, base: Path | None = None) -> str:
    """The SPEC with its path made absolute, so ids and workers do not depend on the current folder."""
    from .io.spec import PACS_PREFIX, SAMPLE_PREFIX, split_spec

    spec = spec.strip()
    if spec.startswith((SAMPLE_PREFIX, PACS_PREFIX)):
        return spec
    if base is not None and not Path(spec).expanduser().is_absolute():
        spec = str(base / spec)
    source, selection = split_spec(spec)
    path = str(Path(source).expanduser().resolve())
    return path if selection is None else f"{path}#{selection}"


def is_study_folder(path: Path) -> bool:
    """Whether a folder holds several studies rather than being one DICOM series.

    DICOM folders are read recursively as one scan, so a folder counts as a collection when it has
    sub-folders (one per study) or holds single-file scans (NIfTI, NRRD, MetaImage).
    """
    if not path.is_dir():
        return False
    collection = False
    for child in path.iterdir():
        if child.name.startswith("."):
            continue
        if child.is_dir() or child.name.lower().endswith(_SCAN_FILES):
            collection = True
        elif is_dicom_file(child):
            return False  # a series folder, whatever else lies beside it (info and train read it as one scan)
    return collection


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"the study list {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def expand_inputs(inputs: Sequence[str], name_pattern: str = DEFAULT_NAME_PATTERN) -> list[Study]:
    """Studies from INPUT arguments: SPECs, folders of studies, and ``@list.txt`` files (one SPEC a line).

    Relative paths in a list file are taken relative to the list's folder, so a list travels with its data.
    Duplicates are dropped (the same SPEC twice would race on one output folder).
    """
    specs: list[str] = []
    for item in inputs:
        if item.startswith("@"):
            lst = Path(item[1:]).expanduser()
            specs.extend(_absolute_spec(s, lst.resolve().parent) for s in _read_list(lst))
            continue
        path = Path(item).expanduser()
        if is_study_folder(path):
            children = sorted(c for c in path.iterdir() if not c.name.startswith(".")
                              and not (c.is_file() and c.name.lower().endswith(_NOT_STUDIES)))
            specs.extend(_absolute_spec(str(c)) for c in children)
        else:
            specs.append(_absolute_spec(item))
    studies: dict[str, Study] = {}
    for spec in specs:
        s = Study(study_id(spec, name_pattern), spec)
        studies.setdefault(s.id, s)
    if not studies or all(_holds_nothing(Path(s.spec)) for s in studies.values()):
        # an empty folder (or one of notes) is no study: said at once, not as a study failed on a worker
        raise EmptyInputError("no studies found in the inputs: " + ", ".join(inputs))
    return list(studies.values())


def _holds_nothing(path: Path) -> bool:
    """A folder with no entry that could be a scan (nothing, hidden files, notes): no study at all."""
    if not path.is_dir():
        return False
    return not any(not c.name.startswith(".") and not (c.is_file() and c.name.lower().endswith(_NOT_STUDIES))
                   for c in path.iterdir())


def is_batch(inputs: Sequence[str]) -> bool:
    """Several INPUTs, a list file or a folder of studies means batch mode; one scan stays in-process."""
    return len(inputs) > 1 or any(i.startswith("@") or is_study_folder(Path(i).expanduser()) for i in inputs)


# -- model identity and the per-process cache ------------------------------------------------------------

def model_fingerprint(model: str | Path) -> str:
    """The model's content fingerprint (``Detector.content_fingerprint``), the same one each result names.

    A retrained or recalibrated model has another, so a rerun with it rescores everything.
    """
    from .detectors.bundle import read_manifest

    read_manifest(model)  # a clear ModelError up front instead of one per study
    return cached_bundle(model).content_fingerprint()


_cache = threading.local()


def cached_bundle(model: str | Path, device: str = "cpu") -> Detector:
    """The model, loaded once per worker (keyed by path, device and file times, so a new model reloads).

    The cache is per thread: with one thread per worker process (the default) that is once per process,
    and with thread workers no two tasks share a detector's buffers.
    """
    from .detectors import load_bundle
    from .detectors.bundle import MANIFEST as BUNDLE_JSON
    from .detectors.bundle import WEIGHTS

    p = Path(model).resolve()
    stamps = tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in (p / BUNDLE_JSON, p / WEIGHTS))
    key = (str(p), device, stamps)
    if getattr(_cache, "key", None) != key:
        _cache.detector = load_bundle(p, device=device)
        _cache.key = key
        _cache.loads = getattr(_cache, "loads", 0) + 1
    return _cache.detector


def bundle_loads() -> int:
    """How many times this thread loaded a bundle (tests check the cache works)."""
    return getattr(_cache, "loads", 0)


# -- the task ----------------------------------------------------------------------------------------------

def score_study(study: Study, model: str, out_root: str, device: str = "cpu",
                threads: int | None = None, gaps: str = "fill", push: str | None = None) -> dict[str, Any]:
    """Score one study on a worker and write its folder atomically; errors become a ``failed`` record.

    User-caused failures (corrupt file, not a scan) and unexpected exceptions are both returned rather than
    raised, so the scheduler never retries a study that will fail again; only a dying worker is retried.
    ``threads`` sets torch's threads in the worker (None: ``$ANOMALENS_THREADS`` there, else torch's default).
    ``push`` names a PACS profile: the result's DICOM objects (``engine.pacs.push``) are written into the
    study's folder under ``dicom/`` with the rest, then stored on that PACS; a refused push leaves the result on
    disk and records the study as failed, so a rerun scores and pushes it again (without duplicates).
    """
    from .device import configure_threads
    from .outputs import write_scan_result
    from .pipeline import load_volume
    from .scoring import score_scan

    t0 = time.perf_counter()
    record: dict[str, Any] = {"spec": study.spec, "worker_pid": os.getpid()}
    objects = None
    try:
        configure_threads(threads)
        det = cached_bundle(model, device)
        volume = load_volume(study.spec, gaps=gaps)
        if "pacs" in volume.metadata:
            record["pacs"] = dict(volume.metadata["pacs"])
        result = score_scan(det, volume, detail=False)
        unpushable = None
        if push is not None:
            from .pacs.push import build_result_objects

            try:
                objects = build_result_objects(result)
            except AnomaLensError as exc:  # the result is still written below; only the push is off
                unpushable = exc
        target = Path(out_root) / study.id
        with atomic_dir(target, overwrite=True) as tmp:
            files = write_scan_result(result, tmp)
            if objects is not None:
                files.update({f"dicom_{role}": p for role, p in objects.write(tmp / "dicom").items()})
        record.update(status="ok", error=None, bundle_loads=bundle_loads(),
                      outputs={k: str(Path(study.id) / v.relative_to(tmp)) for k, v in files.items()},
                      **result.summary())
        if unpushable is not None:
            record.update(status="failed", error=f"scored and written, but not pushed: {unpushable}")
    except AnomaLensError as exc:
        record.update(status="failed", error=str(exc), outputs={})
    except Exception as exc:  # a bug or an unreadable file must not take the batch down
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", outputs={})
    if objects is not None and record["status"] == "ok":
        _push(record, objects, str(push))
    if record.get("error"):
        # Redacted here too, where the reader registered the files its message names (a file beside a series,
        # "Doe^John report.pdf"): the client's registry never saw them. The client keeps one of the two.
        record["error_redacted"] = redact_paths(str(record["error"]))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def _push(record: dict[str, Any], objects: Any, pacs: str) -> None:
    """Store a written result's DICOM objects on a PACS, noting the outcome in the study's record."""
    from .pacs.client import PacsClient
    from .pacs.push import push_result

    try:
        with PacsClient.open(pacs) as client:
            record["pushed"] = push_result(client, objects).to_dict()
    except AnomaLensError as exc:
        record.update(status="failed", error=f"scored and written, but not pushed: {exc}")
    except Exception as exc:
        record.update(status="failed", error=f"scored and written, but not pushed: {type(exc).__name__}: {exc}")


# -- manifest ----------------------------------------------------------------------------------------------

def read_batch_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of an output folder (empty if none yet); a damaged one is treated as empty."""
    path = Path(out) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"version": MANIFEST_VERSION, "studies": {}}
    if not isinstance(data, dict) or not isinstance(data.get("studies"), dict):
        return {"version": MANIFEST_VERSION, "studies": {}}
    return data


def _is_done(entry: dict[str, Any] | None, out: Path, fingerprint: str, push: str | None = None) -> bool:
    if not entry or entry.get("status") != "ok" or entry.get("model_fingerprint") != fingerprint:
        return False
    if push is not None and (entry.get("pushed") or {}).get("pacs") != push:
        return False  # scored before, but not yet stored on this PACS
    return all((out / rel).is_file() for rel in (entry.get("outputs") or {}).values()) and bool(entry.get("outputs"))


# -- the run -----------------------------------------------------------------------------------------------

def _sweep_leftovers(out: Path, todo: Sequence[Study]) -> None:
    """Remove half-written folders of these studies (about to be scored again, or finished for good).

    A worker killed while writing (OOM, a lost node) leaves its ``atomic_dir`` temporary folder behind.
    Called before a run for the studies it will score and after it for those that finished: in both cases
    nothing else is writing them.
    """
    import shutil

    for s in todo:
        for pattern in (f".{s.id}.*.tmp", f".{s.id}.old-*"):
            for leftover in out.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)


def run_batch(model: str | Path, inputs: Sequence[str] | Sequence[Study], out: str | Path, *,
              workers: int | None = None, scheduler: str | None = None, client: Any = None,
              device: str = "cpu", processes: bool = True,
              on_result: Callable[[str, dict[str, Any]], None] | None = None,
              threads: int | None = None, keep_paths: bool = False,
              name_pattern: str = DEFAULT_NAME_PATTERN, gaps: str = "fill", push: str | None = None,
              progress: ProgressCallback | None = None) -> BatchSummary:
    """Score many studies on dask.distributed, resumable, writing ``out/<id>/`` and ``out/manifest.json``.

    Args:
        model: bundle folder; must be readable by every worker at the same path.
        inputs: INPUT strings (see ``expand_inputs``) or ready ``Study`` objects.
        out: output folder, on a filesystem the workers share with this process.
        workers: local cluster size (default: CPU count, at most the number of studies to score).
        scheduler: address of an existing scheduler (``tcp://host:8786``); no local cluster is started.
        client: an existing ``distributed.Client`` (tests, notebooks); takes precedence over the above.
        device: device each worker scores on (``auto`` resolves on the worker).
        processes: local cluster of processes (default) or threads.
        progress: ``progress(fraction, "k/N studies done")`` after each study (the CLI passes its bar on a
            terminal, or plain lines in a log).
        on_result: called as ``on_result(study_id, record)`` after each result is recorded.
        threads: torch threads in each worker. None: ``$ANOMALENS_THREADS`` in the worker's environment;
            for a local cluster without it, the cores shared out evenly among the workers.
        keep_paths: record each study's SPEC and the model's path in the manifest, and errors as they were
            raised. By default the manifest names studies by their id and hash only and error texts have their
            paths replaced by ``<path:…>`` tokens: folder and file names often name patients.
        name_pattern: output-folder names (``study_id``); the default holds a hash only.
        gaps: DICOM series with missing slices (``engine.io.read_scan``): "fill" (default), "refuse", "stack".
        push: a PACS profile name: each result's SEG, Parametric Map and SR are stored there as it finishes
            (``score_study``); a study counts as done only once pushed to it. Needs a calibrated model.
    """
    from distributed import Client, LocalCluster, as_completed

    t0 = time.perf_counter()
    out = Path(out).expanduser().resolve()
    model_path = str(Path(model).expanduser().resolve())
    fingerprint = model_fingerprint(model_path)
    if push is not None:
        _check_push(model_path, push)
    if inputs and all(isinstance(i, Study) for i in inputs):
        studies: list[Study] = list(inputs)  # type: ignore[arg-type]
    else:
        studies = expand_inputs([str(i) for i in inputs], name_pattern)
    for s in studies:
        remember(split_spec(s.spec)[0])  # error texts below name them by token only
    ensure_folder(out)
    manifest = read_batch_manifest(out)
    manifest.update(version=MANIFEST_VERSION, model=model_path if keep_paths else None, model_fingerprint=fingerprint,
                    keep_paths=keep_paths)
    summary = BatchSummary(out=out)
    todo: list[Study] = []
    for s in studies:
        if _is_done(manifest["studies"].get(s.id), out, fingerprint, push):
            summary.skipped.append(s.id)
        else:
            todo.append(s)
    # Nothing writes this folder before the run starts: dead temporary folders of any study can go, also of
    # finished ones that a killed worker of an earlier run was writing again.
    _sweep_leftovers(out, studies)
    _save(out, manifest)
    if not todo:
        summary.seconds = time.perf_counter() - t0
        return summary

    cluster = None
    own_client = client is None
    if client is None:
        if scheduler:
            client = Client(scheduler)
        else:
            n = max(1, min(workers or os.cpu_count() or 1, len(todo)))
            # Each worker process would otherwise start one torch thread per core: n workers would run
            # n × cores threads that spin against each other. $ANOMALENS_THREADS, when set, still wins.
            if threads is None and not os.environ.get(THREADS_ENV):
                threads = max(1, (os.cpu_count() or 1) // n)
            # Worker processes listen on loopback only; thread workers talk in-process (no address at all).
            where = {"host": "127.0.0.1"} if processes else {}
            if processes:  # workers ignore Ctrl-C (each printed a traceback); this process stops them
                where["preload"] = ["anomalens.engine.workerboot"]
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=":0",
                                   **where)
            client = Client(cluster)
    try:
        summary.workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        futures = {client.submit(score_study, s, model_path, str(out), device, threads, gaps, push, pure=False,
                                 key=f"anomalens-score-{s.id}-{fingerprint}-{time.time_ns()}"): s for s in todo}
        done = 0
        for fut in as_completed(futures):
            done += 1
            report(progress, done / len(futures), f"{done}/{len(futures)} studies done")
            s = futures[fut]
            try:
                record = fut.result()
            except Exception as exc:  # the worker died (KilledWorker) or the task could not be shipped
                record = {"spec": s.spec, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                          "outputs": {}, "seconds": None}
            # Let go of the result at once: if the worker holding it dies later, the scheduler would otherwise
            # run the study again behind our back to restore data we no longer need (seen under load: a
            # second write of a finished study, cut short, left its temporary folders behind).
            fut.release()
            record.update(model_fingerprint=fingerprint, spec_hash=hashlib.sha256(s.spec.encode()).hexdigest()[:12],
                          finished=datetime.now(UTC).isoformat(timespec="seconds"))
            shown = record.pop("error_redacted", None)
            if not keep_paths:
                record.pop("spec", None)
                if record.get("error"):
                    record["error"] = redact_paths(str(shown or record["error"]))
            manifest["studies"][s.id] = record
            _save(out, manifest)
            if record["status"] == "ok":
                summary.ok.append(s.id)
                status = (record.get("pushed") or {}).get("status") or {}
                if status and "stored" not in status.values():
                    summary.already_on_pacs.append(s.id)
            else:
                summary.failed[s.id] = str(record.get("error"))
            if on_result is not None:
                on_result(s.id, record)
    except BaseException:
        # The batch ends early: Ctrl-C, or a manifest that can no longer be written (a full or read-only disk).
        # The CLI says so in one line; closing the cluster under running tasks makes distributed log each task
        # it cancels, as warnings or errors with tracebacks (the results so far are in the manifest, a rerun
        # resumes)
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        if own_client:  # and each worker, whose task is cancelled under it
            with contextlib.suppress(Exception):
                client.run(_quiet_distributed)
        raise
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()
    # A worker that died mid-write can leave a temporary folder even for a study that then finished
    # elsewhere (seen under load when dask recomputed it); every task is over now, so such folders are dead.
    ok = set(summary.ok)
    _sweep_leftovers(out, [s for s in todo if s.id in ok])
    summary.seconds = time.perf_counter() - t0
    return summary


def _quiet_distributed() -> None:
    """On a worker: no log lines about the tasks a shutdown cancels."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _check_push(model: str, pacs: str) -> None:
    """Refuse a push batch up front (uncalibrated model, unknown profile, no secret), not once per study."""
    from .pacs.profiles import get_profile, resolve_secret

    if cached_bundle(model).calibration is None:
        raise ConfigError("pushing to a PACS needs a calibrated model (a mask, a map in normal-quantile units, a "
                          "lesion volume); calibrate it with 'anomalens calibrate'")
    resolve_secret(get_profile(pacs))


def _save(out: Path, manifest: dict[str, Any]) -> None:
    manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
