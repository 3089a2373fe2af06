"""The tests' own data and the rule for ../shared: tests/data is what tests/data/make_data.py writes and stays
small; a test that reads a missing ../shared path is skipped outside CI and fails in CI, naming the path."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


def test_make_data_writes_the_committed_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ in tests/data
    spec = importlib.util.spec_from_file_location("make_data", DATA / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    written = make_data.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in DATA.glob("*.jsonl.gz"))
    for path in written:  # compared decompressed: gzip's bytes may differ between zlib builds
        assert gzip.decompress(path.read_bytes()) == gzip.decompress((DATA / path.name).read_bytes()), \
            f"tests/data/{path.name} is not what make_data.py writes: run `python tests/data/make_data.py`"


def test_data_stays_small():
    files = [p for p in DATA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 200_000, {p.name: p.stat().st_size for p in files}


@pytest.mark.parametrize("ci, outcome", [(None, pytest.skip.Exception), ("", pytest.skip.Exception), ("false", pytest.skip.Exception),
                                         ("0", pytest.skip.Exception), ("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                         ("yes", pytest.fail.Exception)])
def test_a_missing_shared_path_skips_outside_ci_and_fails_in_ci(shared, monkeypatch, ci, outcome):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="shared/no-such-dir/x.jsonl.gz"):
        shared("no-such-dir", "x.jsonl.gz")
    with pytest.raises(outcome, match="shared/no-such-dir/y.jsonl.gz"):
        shared("no-such-dir/y.jsonl.gz")  # one argument with "/" (as the needs_shared marker passes it)


def test_a_present_shared_path_is_returned(shared):
    readme = shared("README.md")  # itself under the rule: skipped without ../shared, failed in CI without it
    assert readme.is_file() and readme.parent.name == "shared" and readme.parent.parent == DATA.parents[2]
