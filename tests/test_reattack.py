"""The second adversarial pass over issue 20's fixes: what a reader of a scored directory (`jobs.state.ScoredDir`,
used by select, threshold and ablate) accepts from state it did not write.

- a final marker naming a path outside the directory (absolute, '..') or under the wrong key is refused as
  foreign state, never followed: the advice is --force-overwrite (what score itself asks), not "rerun score";
- a data file without a final marker is named, with the advice that is true: move it out (score leaves it);
- a scored file edited without changing its record count (a score changed by hand) is caught by the size score
  recorded (`output_size`), and a rerun of score repairs it as the message says; markers of older versions
  (no `output_size`) are read as before;
- a marker whose record count is no non-negative integer is refused in one line.

The fixed scorer (no model) and the CLI in-process keep these fast.
"""

from __future__ import annotations

import json

import pytest

from scalingfilter.jobs.state import FINAL_DIR, STATE_DIR, InconsistentScoredDirError, ScoredDir
from scalingfilter.io.records import count_records
from scalingfilter.testing import one_line_error, run_cli, score_cli

DOCS = [{"text": f"document number {i} with a few more words to count"} for i in range(8)]


@pytest.fixture
def scored(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (inp / name).write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    out = tmp_path / "out"
    assert score_cli(inp, out).returncode == 0
    return inp, out


def select(inp, out, *extra):
    return run_cli(["select", "--input-dir", str(inp), "--output-dir", str(out), "--keep", "0.5", "--min-tokens", "0", *extra])


def read_all(d: ScoredDir) -> None:
    """What select does with a scored directory before it writes anything: the files, their counts, their sizes."""
    files, expected = d.data_files()
    d.check_counts(files, [count_records(d.root / f) for f in files], expected)


def marker_path(out, source):
    return next(p for p in (out / STATE_DIR / FINAL_DIR).iterdir() if json.loads(p.read_text())["source"] == source)


@pytest.mark.parametrize("source", ["ABS", "../victim.jsonl", "sub/../../victim.jsonl"])
def test_a_final_marker_naming_a_path_outside_is_foreign_state(scored, tmp_path, source):
    inp, out = scored
    victim = tmp_path / "victim.jsonl"
    victim.write_text('{"text": "not yours"}\n')
    source = str(victim) if source == "ABS" else source
    # the path exists from OUT's point of view, so only the check on the path itself can refuse it
    (out / STATE_DIR / FINAL_DIR / "evil.json").write_text(json.dumps({"source": source, "records": 1, "size": 1, "mtime_ns": 1}))
    with pytest.raises(InconsistentScoredDirError, match="did not write") as err:
        ScoredDir.open(out).data_files()
    assert "repairs it" not in str(err.value) and "--force-overwrite" in str(err.value)
    line = one_line_error(select(out, tmp_path / "sel"))
    assert "evil.json" in line and "did not write" in line
    assert victim.read_text() == '{"text": "not yours"}\n'
    assert not (tmp_path / "sel").exists()


def test_a_second_marker_of_one_file_is_foreign_state(scored, tmp_path):
    inp, out = scored
    a = json.loads(marker_path(out, "a.jsonl").read_text())
    (out / STATE_DIR / FINAL_DIR / "zzz.json").write_text(json.dumps({**a, "records": 3}))  # would shadow a.jsonl's marker
    with pytest.raises(InconsistentScoredDirError, match="zzz.json names 'a.jsonl', as another final marker does"):
        ScoredDir.open(out).data_files()
    assert score_cli(inp, out).returncode == 2  # score refuses it too (the advice is --force-overwrite)


def test_an_unmarked_file_is_named_with_advice_that_is_true(scored, tmp_path):
    inp, out = scored
    (out / "foreign.jsonl").write_text('{"text": "mine"}\n')
    with pytest.raises(InconsistentScoredDirError, match="move it out of the output directory") as err:
        ScoredDir.open(out).data_files()
    assert "foreign.jsonl has no final marker" in str(err.value) and "did not write it" in str(err.value)
    # the advice is true: score leaves a file it did not write alone, so a rerun does not repair this ...
    assert score_cli(inp, out).returncode == 0
    assert (out / "foreign.jsonl").read_text() == '{"text": "mine"}\n'
    assert "move it out" in one_line_error(select(out, tmp_path / "sel"))
    # ... moving it out does
    (out / "foreign.jsonl").rename(tmp_path / "foreign.jsonl")
    assert select(out, tmp_path / "sel").returncode == 0


def test_an_edit_that_keeps_the_record_count_is_caught_and_a_rerun_repairs_it(scored, tmp_path):
    inp, out = scored
    path = out / "a.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    before = first["quality_factor"]
    first["quality_factor"] = 1e6  # the document a selection would keep first
    path.write_text(json.dumps(first) + "\n" + "".join(lines[1:]))
    assert count_records(path) == len(DOCS)  # the count alone cannot tell
    with pytest.raises(InconsistentScoredDirError, match=r"a\.jsonl has \d+ bytes, its final marker says \d+") as err:
        read_all(ScoredDir.open(out))
    assert "repairs it" in str(err.value)
    assert "changed since it was scored" in one_line_error(select(out, tmp_path / "sel"))
    assert score_cli(inp, out).returncode == 0  # as the message says
    read_all(ScoredDir.open(out))
    assert json.loads(path.read_text().splitlines()[0])["quality_factor"] == before


def test_markers_of_older_versions_without_output_size_are_read_as_before(scored):
    inp, out = scored
    for p in (out / STATE_DIR / FINAL_DIR).iterdir():
        m = json.loads(p.read_text())
        assert type(m["output_size"]) is int and m["output_size"] == (out / m["source"]).stat().st_size
        del m["output_size"]
        p.write_text(json.dumps(m))
    path = out / "a.jsonl"  # an edit that only output_size could have caught
    path.write_text(path.read_text().replace('"quality_factor":', '"quality_factor": ', 1))
    read_all(ScoredDir.open(out))


@pytest.mark.parametrize("records", ["8", 8.0, True, -1, None])
def test_a_record_count_this_tool_does_not_write_is_refused(scored, tmp_path, records):
    inp, out = scored
    p = marker_path(out, "a.jsonl")
    p.write_text(json.dumps({**json.loads(p.read_text()), "records": records}))
    with pytest.raises(InconsistentScoredDirError, match="holds no record count this tool writes"):
        ScoredDir.open(out).data_files()
    one_line_error(select(out, tmp_path / "sel"))


def test_a_file_assembled_from_foreign_parts_gets_advice_that_repairs_it(scored, tmp_path):
    """The state an interrupted run leaves, with a part file replaced (a link to another file): assembly copies it,
    and the final marker records the size of what was assembled. A plain rerun keeps such a file (its size is
    the recorded one), so the advice is --force-overwrite, and that repairs it."""
    inp, out = scored
    path = out / "a.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))  # as assembled from a foreign part
    p = marker_path(out, "a.jsonl")
    p.write_text(json.dumps({**json.loads(p.read_text()), "output_size": path.stat().st_size}))
    with pytest.raises(InconsistentScoredDirError, match="--force-overwrite") as err:
        read_all(ScoredDir.open(out))
    assert "repairs it" not in str(err.value) and f"has 3 records, its final marker says {len(DOCS)}" in str(err.value)
    assert score_cli(inp, out).returncode == 0
    with pytest.raises(InconsistentScoredDirError, match="--force-overwrite"):  # a plain rerun did not repair it
        read_all(ScoredDir.open(out))
    assert score_cli(inp, out, "--force-overwrite").returncode == 0
    read_all(ScoredDir.open(out))
    assert count_records(path) == len(DOCS)
