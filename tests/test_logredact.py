"""Log lines must not carry file paths (folders named after patients)."""

from __future__ import annotations

import logging

from anomalens.engine.logredact import RedactingFormatter, redact_paths


def test_paths_are_replaced_by_stable_placeholders() -> None:
    line = ("could not read '/data/Smith, John 1961/CT/IM0001.dcm': not a DICOM file; "
            "also C:\\Users\\jdoe\\scans\\brain.nii.gz and ./relative/case.nrrd")
    out = redact_paths(line)
    for secret in ("Smith", "John", "jdoe", "IM0001", "relative", "brain.nii"):
        assert secret not in out
    assert out.count("<path:") == 3
    assert "not a DICOM file" in out and "could not read" in out
    assert redact_paths("'/a/b.dcm'") == redact_paths("'/a/b.dcm'") != redact_paths("'/a/c.dcm'")


def test_an_apostrophe_inside_a_word_is_no_quote() -> None:
    advice = ("'pacs push' stores only AnomaLens results (the files in a result's dicom folder, or a/b); send "
              "other files with the PACS's own tools")
    out = redact_paths(advice)
    assert out.startswith("'pacs push' stores only AnomaLens results (the files in a result's dicom folder, or ")
    assert out.endswith("); send other files with the PACS's own tools") and out.count("<path:") == 1  # a/b alone
    for quoted in ("cannot open '/home/Doe John/scan.nii'", "PosixPath('/a/b c/d.nii')", "('x/y z', 3)"):
        redacted = redact_paths(quoted)
        assert "Doe" not in redacted and " c/" not in redacted and "y z" not in redacted and "<path:" in redacted


def test_plain_text_is_left_alone() -> None:
    text = "epoch 3/30: scored 25 slices in 1.2 s, threshold 0.53 (1 % FPR), λ = 30; 3 of 4 learners"
    assert redact_paths(text) == text


def test_formatter_redacts_messages_and_tracebacks() -> None:
    fmt = RedactingFormatter("%(levelname)s %(message)s")
    try:
        raise FileNotFoundError("/home/patient_doe/scan.mha")
    except FileNotFoundError as exc:
        record = logging.LogRecord("anomalens", logging.ERROR, __file__, 1, "failed on %s",
                                   ("/home/patient_doe/scan.mha",), (type(exc), exc, exc.__traceback__))
    out = fmt.format(record)
    assert "patient_doe" not in out and "FileNotFoundError" in out and "<path:" in out


def test_a_server_address_stays_readable_and_its_path_is_redacted() -> None:
    """A dashboard's or a PACS's address says which server to look at; a URL path may hold a study's UIDs."""
    assert redact_paths("dashboard at http://127.0.0.1:8787/status") == "dashboard at http://127.0.0.1:8787/status"
    assert redact_paths("PACS https://pacs.example.org:443 is down") == "PACS https://pacs.example.org:443 is down"
    out = redact_paths("GET http://localhost:8042/dicom-web/studies/1.2.840.99.7/series failed")
    assert out.startswith("GET http://localhost:8042<path:") and "1.2.840" not in out and out.endswith(" failed")
    assert "DOE" not in redact_paths("read file:///home/DOE/x.nii")  # no host: a local path, all of it redacted


def test_a_scheme_alone_and_a_quoted_url_keep_their_server() -> None:
    """The PACS profile error read "must start with <path:…> or <path:…>, got '<path:…>'" once errors were redacted."""
    line = "the PACS URL must start with https:// or http:// and name a host, got 'ftp://pacs.example.org'"
    assert redact_paths(line) == line


def test_dicom_uids_and_pacs_specs_are_no_paths() -> None:
    """"name one as pacs:1.2.3/SERIES_UID" read "pac<path:…>", and a series UID a cache folder is named by vanished."""
    from anomalens.engine.logredact import forget_all, remember

    line = "the study holds 2 image series; name one as pacs:1.2.826.0.1.3680043.8.498.132/SERIES_UID: 1.2.826.244"
    assert redact_paths(line) == line
    remember("/cache/pacs/1.2.826.0.1.3680043.8.498.1/1.2.826.0.1.3680043.8.498.10/IM1.dcm")
    try:
        assert redact_paths('retrieve series "1.2.826.0.1.3680043.8.498.10"') == \
            'retrieve series "1.2.826.0.1.3680043.8.498.10"'
    finally:
        forget_all()
    assert "jdoe" not in redact_paths("C:\\Users\\jdoe\\scan.nii")


def test_the_products_own_words_and_folders_stay_readable() -> None:
    """`eval` said "so <path:…> (with and without SCR) have no operating point" ("dice/precision"), and after a
    sample was fetched into ``…/anomalens/samples`` every "anomalens: demo: …" progress line began "<path:…>"."""
    from anomalens.engine.logredact import forget_all, remember

    for line in ("so Dice/precision (with and without SCR) have no operating point",
                 "cannot write the result: input/output error", "refusing NaN/inf voxels"):
        assert redact_paths(line) == line
    remember("/home/u/.cache/anomalens/site-profiles/default/v0001/bundle.json")
    try:
        progress = "anomalens: demo: patchcore on brain1:  90%"
        assert redact_paths(progress) == progress
        assert "v0001" not in redact_paths("read /home/u/.cache/anomalens/site-profiles/default/v0001")  # whole
        assert "DOE" not in redact_paths("and/DOE")  # a word pair is an exact phrase, not a prefix
    finally:
        forget_all()
