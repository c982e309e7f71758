"""Package-index discovery (pip's settings) and simple-index page parsing, without any network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anomalens.engine.samples.pipconfig import (
    DEFAULT_INDEX_URL,
    discover_indexes,
    pip_config_files,
    pip_settings,
)
from anomalens.engine.samples.pipindex import normalize_project, parse_html_page, parse_json_page
from anomalens.engine.samples.transport import file_url_to_path, redact

SHA = "ab" * 32


def _conf(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- discovery
def test_pip_index_url_environment_wins_over_config(tmp_path) -> None:
    conf = _conf(tmp_path / "pip.conf", "[global]\nindex-url = https://mirror.example/simple\n")
    found = discover_indexes(environ={"PIP_INDEX_URL": "https://env.example/simple/"}, config_files=[conf])
    assert found[0].url == "https://env.example/simple/" and found[0].origin == "PIP_INDEX_URL"


def test_config_index_url_is_used_without_environment(tmp_path) -> None:
    conf = _conf(tmp_path / "pip.conf", "[global]\nindex_url = https://mirror.example/simple\n")
    found = discover_indexes(environ={}, config_files=[conf])
    assert [s.url for s in found] == ["https://mirror.example/simple"]
    assert str(conf) in found[0].origin


def test_default_index_when_nothing_is_configured(tmp_path) -> None:
    conf = _conf(tmp_path / "pip.conf", "[global]\ntimeout = 10\n")
    found = discover_indexes(environ={}, config_files=[conf, tmp_path / "absent.conf"])
    assert [s.url for s in found] == [DEFAULT_INDEX_URL]
    assert found[0].url == "https://pypi.org/simple/"


def test_later_files_and_install_section_take_precedence(tmp_path) -> None:
    low = _conf(tmp_path / "a.conf", "[global]\nindex-url = https://low.example/simple\n")
    high = _conf(tmp_path / "b.conf", "[global]\nindex-url = https://high.example/simple\n"
                                      "[install]\nindex-url = https://install.example/simple\n")
    assert discover_indexes(environ={}, config_files=[low, high])[0].url == "https://install.example/simple"
    assert discover_indexes(environ={}, config_files=[high, low])[0].url == "https://install.example/simple"
    assert discover_indexes(environ={}, config_files=[_conf(tmp_path / "c.conf", "[global]\n"), low])[0].url \
        == "https://low.example/simple"


def test_extra_indexes_follow_the_main_one_without_duplicates(tmp_path) -> None:
    conf = _conf(tmp_path / "pip.conf", "[global]\nextra-index-url =\n  file:///srv/a/simple\n"
                                        "  https://pypi.org/simple\n")
    urls = [s.url for s in discover_indexes(environ={}, config_files=[conf])]
    assert urls == [DEFAULT_INDEX_URL, "file:///srv/a/simple"]
    env = {"PIP_EXTRA_INDEX_URL": "https://x.example/simple https://y.example/simple"}
    urls = [s.url for s in discover_indexes(environ=env, config_files=[conf])]
    assert urls == [DEFAULT_INDEX_URL, "https://x.example/simple", "https://y.example/simple"]


def test_cert_and_proxy_are_read_like_pip(tmp_path) -> None:
    conf = _conf(tmp_path / "pip.conf", "[global]\ncert = /etc/ca.pem\nproxy = http://proxy:3128\n")
    settings = pip_settings(environ={"PIP_CERT": "/opt/ca.pem"}, config_files=[conf])
    assert settings.cert == "/opt/ca.pem" and settings.proxy == "http://proxy:3128"


def test_broken_config_file_is_ignored(tmp_path) -> None:
    broken = _conf(tmp_path / "pip.conf", "index-url with no section\n[[[\n")
    assert discover_indexes(environ={}, config_files=[broken])[0].url == DEFAULT_INDEX_URL


def test_pip_config_file_variable_follows_pips_rules(tmp_path) -> None:
    assert pip_config_files({"PIP_CONFIG_FILE": os.devnull}) == []
    own = _conf(tmp_path / "own.conf", "[global]\nindex-url = https://own.example/simple\n")
    files = pip_config_files({"PIP_CONFIG_FILE": str(own)})
    assert files[-1] == own
    assert not any(p.parent.name in (".pip",) or p.parent == Path.home() / ".config" / "pip" for p in files)
    default = pip_config_files({})
    assert own not in default and any(p.name in ("pip.conf", "pip.ini") for p in default)
    # With no explicit file list, discovery reads exactly those files (here: the variable's file wins).
    assert discover_indexes(environ={"PIP_CONFIG_FILE": str(own)})[0].url == "https://own.example/simple"


# ----------------------------------------------------------------------------------------------- parsing
def test_json_page_resolves_relative_urls_and_hashes() -> None:
    doc = {"meta": {"api-version": "1.1"}, "files": [
        {"filename": "p-1.tar.gz", "url": "../../files/p-1.tar.gz", "hashes": {"sha256": SHA.upper()},
         "size": 9},
        {"filename": "p-2.tar.gz", "url": "https://cdn.example/p-2.tar.gz", "hashes": {"md5": "x"}},
        {"no": "filename"},
    ]}
    files = parse_json_page(json.dumps(doc).encode(), "https://idx.example/simple/p/")
    assert [(f.filename, f.url, f.sha256, f.size) for f in files] == [
        ("p-1.tar.gz", "https://idx.example/files/p-1.tar.gz", SHA, 9),
        ("p-2.tar.gz", "https://cdn.example/p-2.tar.gz", None, None),
    ]
    with pytest.raises(ValueError):
        parse_json_page(b"<html></html>", "https://idx.example/simple/p/")


def test_html_page_reads_fragments_base_and_text() -> None:
    html = (f'<html><head><base href="https://mirror.example/root/"></head><body>'
            f'<a href="pkgs/p-1.tar.gz#sha256={SHA}" data-requires-python="&gt;=3.8">p-1.tar.gz</a>'
            f'<a href="pkgs/p%2B2.tar.gz#md5=abc"></a></body></html>')
    files = parse_html_page(html.encode(), "https://other.example/simple/p/")
    assert [(f.filename, f.url, f.sha256) for f in files] == [
        ("p-1.tar.gz", "https://mirror.example/root/pkgs/p-1.tar.gz", SHA),
        ("p+2.tar.gz", "https://mirror.example/root/pkgs/p%2B2.tar.gz", None),
    ]


def test_project_names_are_normalised() -> None:
    assert normalize_project("PyRadiomics_BHKLab") == "pyradiomics-bhklab"
    assert normalize_project("a.b__c--d") == "a-b-c-d"


def test_urls_with_credentials_are_redacted_and_file_urls_map_to_paths(tmp_path) -> None:
    assert redact("https://u:pw@host.example:8443/simple/") == "https://***@host.example:8443/simple/"
    assert redact("https://host.example/simple/") == "https://host.example/simple/"
    assert file_url_to_path(tmp_path.as_uri()) == tmp_path
