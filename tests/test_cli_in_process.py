"""The CLI run in this process (scalingfilter.testing.run_cli), which most tests use instead of a new process:
it reports what the console script's process reports (exit status, stdout, stderr), leaves this process as it
found it, and refuses the fault settings that would end this process."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from scalingfilter.io.locations import storage_options
from scalingfilter.testing import FIXED_SCORER, cli_process, run_cli, write_jsonl


@pytest.mark.parametrize("argv", [
    ["score", "--input-dir", "{tmp}/missing", "--output-dir", "{tmp}/out"],  # a ScalingFilterError: one line, 2
    ["score", "--input-dir", "{tmp}/in", "--output-dir", "{tmp}/out", "--unit-docs", "0"],  # argparse: usage, 2
    ["select", "--help"],  # argparse: 0, the help on stdout
])
def test_in_process_reports_what_the_console_script_does(tmp_path, argv, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse's width, whether or not this process has a terminal
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "a document"}])
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    here, there = run_cli(argv, env=FIXED_SCORER), cli_process(argv, env=FIXED_SCORER)
    assert (here.returncode, here.stdout, here.stderr) == (there.returncode, there.stdout, there.stderr)


def test_warnings_reach_stderr_as_in_a_fresh_process(tmp_path):
    """A logged warning (no handler configured: logging's last resort) is in stderr, whatever pytest configured."""
    inp = tmp_path / "in"
    write_jsonl(inp / "a.jsonl", [{"text": "a document"}])
    os.symlink(tmp_path / "nowhere.jsonl", inp / "dangling.jsonl")
    r = run_cli(["score", "--input-dir", str(inp), "--output-dir", str(tmp_path / "out"), "--no-progress"], env=FIXED_SCORER)
    assert r.returncode == 0 and "dangling symbolic link" in r.stderr, r.stderr


def test_this_process_is_left_as_it_was(tmp_path, monkeypatch):
    monkeypatch.delenv("SCALINGFILTER_TEST_SCORER", raising=False)
    handlers, argv, options = logging.getLogger().handlers[:], sys.argv, storage_options()
    r = run_cli(["score", "--input-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out"),
                 "--storage-option", "anon=true"], env=FIXED_SCORER)
    assert r.returncode == 2
    assert "SCALINGFILTER_TEST_SCORER" not in os.environ and storage_options() == options
    assert logging.getLogger().handlers == handlers and sys.argv is argv


@pytest.mark.parametrize("setting", ["SCALINGFILTER_TEST_KILL_AFTER_UNITS", "SCALINGFILTER_TEST_ABORT_AFTER_FILES",
                                     "SCALINGFILTER_TEST_KILL_AFTER_CHECKPOINTS", "SCALINGFILTER_TEST_TERM_DRIVER_AT_CONNECT"])
def test_a_fault_that_ends_the_process_needs_a_subprocess(tmp_path, setting):
    with pytest.raises(ValueError, match="start a subprocess"):
        run_cli(["score", "--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")], env={setting: "1"})


def test_the_installed_console_script_exits_as_run_cli_reports(tmp_path):
    """The one run of the real `scalingfilter` entry point (pyproject's [project.scripts]): its exit status and its
    one-line error are what run_cli reports for the same command."""
    import subprocess

    script = Path(sys.executable).parent / "scalingfilter"
    if not script.exists():
        pytest.skip(f"no console script at {script} (the package is not installed in this environment)")
    argv = ["score", "--input-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out")]
    real = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120)
    here = run_cli(argv)
    assert real.returncode == here.returncode == 2 and real.stderr == here.stderr and real.stderr.count("\n") == 1, real.stderr
