"""The CLI as one tool: progress lines in logs, global options anywhere, ``--self-test`` as an alias."""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from pathlib import Path

import pytest

from anomalens.engine.cli import progressbar
from anomalens.engine.cli.main import _self_test_alias, build_parser, main
from anomalens.engine.cli.progressbar import ProgressLines, terminal_progress

LINE = re.compile(r"^anomalens: (?P<desc>[^:]+): +(?P<pct>\d+)% ?(?P<msg>.*)$")
SMALL_SAMPLE = "sample:mni152#80-83"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch) -> None:
    # The MNI152 sample derives its brain mask into the cache: keep that out of the user's cache.
    monkeypatch.setenv("ANOMALENS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cli-tool-cache"))
    monkeypatch.delenv("ANOMALENS_PROGRESS", raising=False)
    monkeypatch.delenv("ANOMALENS_THREADS", raising=False)


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress_lines(err: str) -> list[re.Match[str]]:
    found = [LINE.match(line) for line in err.splitlines()]
    return [m for m in found if m]


# --- progress off a terminal -------------------------------------------------------------------------------

def test_lines_per_stage_and_per_tenth_not_per_call(capsys) -> None:
    clock = FakeClock()
    lines = ProgressLines("training x", quiet_start_s=0, clock=clock)
    lines(0.0, "reading")
    for i in range(1, 51):  # fifty reports of one stage, from 1 % to 25 %: its counts change, the stage does not
        lines(0.005 * i, f"read {i}/50 images")
        clock.now += 0.01
    lines(0.25, "")  # no message: still the same stage
    lines(0.3, "training")
    for epoch in range(1, 71):  # 30 % to 100 %
        clock.now += 0.5
        lines(0.3 + 0.01 * epoch, f"epoch {epoch}/70")
    lines.close()
    lines(1.0, "after close")
    got = [(int(m["pct"]), m["msg"]) for m in progress_lines(capsys.readouterr().err)]
    assert got == [(0, "reading"), (0, "read 1/50 images"), (10, "read 20/50 images"), (20, "read 40/50 images"),
                   (30, "training"), (31, "epoch 1/70"), (40, "epoch 10/70"), (50, "epoch 20/70"),
                   (60, "epoch 30/70"), (70, "epoch 40/70"), (80, "epoch 50/70"), (90, "epoch 60/70"),
                   (100, "epoch 70/70")]


def test_a_flapping_stage_is_not_repeated_within_a_second(capsys) -> None:
    clock = FakeClock()
    lines = ProgressLines("scoring", quiet_start_s=0, clock=clock)
    for _ in range(20):  # two stages alternating every 0.1 s within one tenth of the work
        lines(0.41, "reading")
        clock.now += 0.05
        lines(0.42, "scoring")
        clock.now += 0.05
    clock.now += 1.0
    lines(0.43, "reading")
    got = [m["msg"] for m in progress_lines(capsys.readouterr().err)]
    assert got == ["reading", "scoring", "reading", "scoring", "reading"]  # about one of each per second, not 40


def test_quiet_start_drops_short_work_and_writes_the_stage_of_long_work(capsys) -> None:
    short = ProgressLines("info", quiet_start_s=0.3)
    short(0.5, "reading")
    short.close()
    time.sleep(0.5)
    assert capsys.readouterr().err == ""

    long = ProgressLines("training x", quiet_start_s=0.2)
    long(0.15, "training")  # then nothing for a long while (a slow epoch): the timer writes it
    time.sleep(0.6)
    try:
        [m] = progress_lines(capsys.readouterr().err)
        assert (m["desc"], m["pct"], m["msg"]) == ("training x", "15", "training")
    finally:
        long.close()


def test_a_path_in_a_message_never_reaches_the_log(capsys) -> None:
    lines = ProgressLines("reading", quiet_start_s=0)
    lines(0.5, "read /data/smith_john/series 3/IM0001.dcm")
    err = capsys.readouterr().err
    assert err.startswith("anomalens: reading:  50% read ") and "<path:" in err
    assert "smith_john" not in err and "IM0001" not in err


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_progress_picks_bar_lines_or_nothing(monkeypatch, capsys) -> None:
    with terminal_progress("x") as progress:  # capsys' stderr is no terminal
        assert isinstance(progress, ProgressLines)
    with terminal_progress("x", enabled=False) as progress:
        assert progress is None
    monkeypatch.setenv("ANOMALENS_PROGRESS", "0")
    with terminal_progress("x") as progress:
        assert progress is None
    monkeypatch.setenv("ANOMALENS_PROGRESS", "1")  # forced bar, as before
    with terminal_progress("forced bar") as progress:
        assert progress is not None and not isinstance(progress, ProgressLines)
        progress(0.5, "halfway")
    assert "forced bar:  50%|" in capsys.readouterr().err
    monkeypatch.delenv("ANOMALENS_PROGRESS")
    tty = TTY()
    monkeypatch.setattr("sys.stderr", tty)
    with terminal_progress("on a terminal") as progress:
        assert not isinstance(progress, ProgressLines)
        progress(0.25, "a quarter")
    assert "on a terminal:  25%|" in tty.getvalue() and "a quarter" in tty.getvalue()


def test_self_test_json_stays_clean_while_progress_goes_to_stderr(capsys, monkeypatch, torch_threads,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(progressbar, "QUIET_START_S", 0.0)  # the small self-test is quicker than the quiet start
    torch_threads.set_num_threads(2)
    code = main(["--self-test", "--threads", "1", "--sample", SMALL_SAMPLE, "--out", str(tmp_path), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["ok"] is True  # the whole of stdout is one JSON document
    assert torch_threads.get_num_threads() == 1
    found = progress_lines(out.err)
    assert found and {m["desc"] for m in found} == {"self-test"}
    assert [int(m["pct"]) for m in found] == sorted(int(m["pct"]) for m in found)
    assert found[-1]["pct"] == "100" and found[-1]["msg"] == "self-test passed"
    assert str(tmp_path) not in out.err


# --- global options before or after the sub-command ----------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["info", "sample:mr_brain_small", "--threads", "1"],
    ["detectors", "--threads", "1"],
    ["samples", "list", "--threads=1"],
    ["self-test", "--sample", SMALL_SAMPLE, "--threads", "1"],
    ["--self-test", "--threads", "1", "--sample", SMALL_SAMPLE],
])
def test_threads_after_the_sub_command(capsys, torch_threads, argv: list[str]) -> None:
    torch_threads.set_num_threads(2)
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    json.loads(out.out)
    assert torch_threads.get_num_threads() == 1


def test_a_global_option_before_is_kept_and_one_after_wins() -> None:
    parser = build_parser()
    assert parser.parse_args(["info", "x"]).threads is None
    assert parser.parse_args(["--threads", "3", "info", "x"]).threads == "3"
    assert parser.parse_args(["--threads", "3", "info", "x", "--threads", "4"]).threads == "4"
    assert parser.parse_args(["info", "x"]).verbose is False
    assert parser.parse_args(["-v", "info", "x"]).verbose is True
    assert parser.parse_args(["info", "x", "-v"]).verbose is True
    assert parser.parse_args(["info", "x", "--verbose", "--json"]).json is True


def test_verbose_after_the_sub_command_runs(capsys) -> None:
    assert main(["detectors", "-v", "--json"]) == 0
    assert any(row["name"] == "patchcore" for row in json.loads(capsys.readouterr().out))


@pytest.mark.parametrize("argv", [["info", "sample:mr_brain_small", "--threads", "x"],
                                  ["--self-test", "--threads", "0"]])
def test_a_bad_thread_count_is_one_line_exit_2(capsys, torch_threads, argv: list[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anomalens: error: --threads must be a whole number"), err


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*path, name))


def test_every_command_takes_the_global_options() -> None:
    leaves = dict(_leaf_parsers(build_parser()))
    assert {("self-test",), ("info",), ("detectors",), ("samples", "list")} <= set(leaves)
    for path, parser in leaves.items():
        options = set(parser._option_string_actions)
        assert {"--json", "--threads", "-v", "--verbose"} <= options, " ".join(path)


# --- --self-test is the self-test sub-command ------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "expected"), [
    (["--self-test", "--threads", "1", "--json"], ["self-test", "--threads", "1", "--json"]),
    (["--threads", "1", "--self-test"], ["--threads", "1", "self-test"]),
    (["--threads=1", "-v", "--self-test", "--out", "x"], ["--threads=1", "-v", "self-test", "--out", "x"]),
    (["info", "--self-test"], ["info", "--self-test"]),
    (["--", "--self-test"], ["--", "--self-test"]),
])
def test_self_test_alias_skips_global_option_values(argv: list[str], expected: list[str]) -> None:
    assert _self_test_alias(argv) == expected


def test_self_test_is_listed_as_a_command_and_the_flag_in_help(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "self-test" in text and "--self-test" in text and "--threads" in text
