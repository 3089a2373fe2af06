"""Crafted state in a killed run's output, and output paths that lead somewhere else (issue 20, third pass):

- 2g: a done marker whose counts are no non-negative integers (`{"records": "x"}`, `[1]`, `true`) is state this
  tool did not write: refused in one line, as a plan marker with such counts is (a marker that is no JSON at all is
  what a killed writer could leave: removed, its unit done anew, as for plan and final markers);
- 2h: a symbolic link (or a FIFO) anywhere in the state, a part file, a done, plan or final marker, is refused,
  never read through: its target is not copied into the output; --force-overwrite removes the link, not its target,
  and removing the link by hand (the other advice) makes the rerun redo the unit;
- 6c: a local path with a '..' after a part that does not exist (`foreignL/sub/..`) is refused before anything is
  created: the system resolves it to nothing, while `mkdir(parents=True)` would create `sub` and then write into
  `foreignL`, past the check of a foreign output directory.

The killed run is made once (a subprocess SIGKILLed after two units, the fixed scorer) and copied for each test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from scalingfilter.jobs.state import DONE_DIR, FINAL_DIR, PARTS_DIR, PLANS_DIR, STATE_DIR, StateError
from scalingfilter.testing import FIXED_SCORER, cli_process, numbered_docs, one_line_error, run_cli, score_cli, write_jsonl

SPLIT = ("--unit-docs", "10", "--split-bytes", "0")  # a.jsonl (30 records) is three units, b.jsonl (5) one
TOTAL = 35
SECRET = '{"text": "a file of someone else, not to be copied"}\n'


@pytest.fixture(scope="module")
def killed_template(tmp_path_factory):
    """(input, a reference output of an uninterrupted run, the output of a run killed after two of a.jsonl's units)."""
    root = tmp_path_factory.mktemp("crafted")
    inp = root / "in"
    write_jsonl(inp / "a.jsonl", numbered_docs(30))
    write_jsonl(inp / "b.jsonl", numbered_docs(5, start=100))
    assert score_cli(inp, root / "ref", *SPLIT).returncode == 0
    out = root / "killed"
    r = score_cli(inp, out, *SPLIT, env={**FIXED_SCORER, "SCALINGFILTER_TEST_KILL_AFTER_UNITS": "2"}, process=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    return inp, root / "ref", out


@pytest.fixture
def killed(killed_template, tmp_path):
    inp, ref, template = killed_template
    out = tmp_path / "out"
    shutil.copytree(template, out, symlinks=True)
    done = sorted((out / STATE_DIR / DONE_DIR).glob("a.jsonl.*.json"))
    assert len(done) == 2 and not (out / "a.jsonl").exists()  # the state this test crafts: a.jsonl half done
    return inp, ref, out


def rerun(inp, out, *extra):
    return score_cli(inp, out, *SPLIT, *extra)


def assert_finished_as_reference(out, ref):
    assert json.loads((out / "summary.json").read_text())["documents"] == TOTAL
    for name in ("a.jsonl", "b.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


# ---- 2g: done markers whose counts this tool never writes

@pytest.mark.parametrize("content", ['{"records": "x"}', "[1]", "TRUE_RECORDS", "NEGATIVE_TOKENS"])
def test_a_done_marker_with_counts_this_tool_never_writes_is_refused(killed, content):
    inp, ref, out = killed
    marker = sorted((out / STATE_DIR / DONE_DIR).glob("a.jsonl.*.json"))[0]
    written = json.loads(marker.read_text())
    if content == "TRUE_RECORDS":  # true is 1 to Python's arithmetic, but no count this tool writes
        content = json.dumps({**written, "records": True})
    elif content == "NEGATIVE_TOKENS":
        content = json.dumps({**written, "tokens": -5})
    marker.write_text(content)
    line = one_line_error(rerun(inp, out))
    assert marker.name in line and "did not write" in line and "--force-overwrite" in line
    assert marker.read_text() == content and not (out / "a.jsonl").exists() and not (out / "summary.json").exists()
    r = rerun(inp, out, "--force-overwrite")
    assert r.returncode == 0, r.stderr
    assert_finished_as_reference(out, ref)


def test_a_done_marker_that_is_no_json_is_removed_and_its_unit_done_anew(killed):
    """What plan and final markers get (`Planner.remove_unreadable`): a killed writer's debris is redone."""
    inp, ref, out = killed
    marker = sorted((out / STATE_DIR / DONE_DIR).glob("a.jsonl.*.json"))[0]
    marker.write_text("{not json")
    r = rerun(inp, out)
    assert r.returncode == 0, r.stderr
    assert "unreadable: removed" in r.stderr
    assert json.loads((out / "summary.json").read_text())["documents_this_run"] == TOTAL - 10  # one unit kept, one redone
    assert_finished_as_reference(out, ref)


def test_a_final_marker_with_counts_this_tool_never_writes_is_refused(killed_template, tmp_path):
    """The summary adds final markers up as assembly adds done markers: the same check, before anything is written."""
    inp, ref, _ = killed_template
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    final = next((out / STATE_DIR / FINAL_DIR).glob("b.jsonl.*.json"))
    final.write_text(json.dumps({**json.loads(final.read_text()), "scored": "many"}))
    line = one_line_error(rerun(inp, out))
    assert final.name in line and "did not write" in line


# ---- 2h: symbolic links (and other files that are not regular) in the state

def secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.jsonl"
    secret.write_text(SECRET)
    return secret


@pytest.mark.parametrize("entry", ["part", "done", "plan", "parts_dir"])
def test_a_symbolic_link_in_the_state_is_refused_never_read_through(killed, tmp_path, entry):
    inp, ref, out = killed
    state = out / STATE_DIR
    secret = secret_file(tmp_path)
    if entry == "part":
        link = next((state / PARTS_DIR).glob("a.jsonl.*/data-00000.jsonl"))
        target = secret
    elif entry in ("done", "plan"):
        link = sorted((state / (DONE_DIR if entry == "done" else PLANS_DIR)).glob("a.jsonl.*.json"))[0]
        target = tmp_path / f"elsewhere-{link.name}"
        shutil.copy(link, target)  # a valid marker: only reading it through the link is wrong
    else:
        link = next((state / PARTS_DIR).glob("a.jsonl.*"))
        target = tmp_path / "elsewhere-parts"
        shutil.copytree(link, target)
        for p in target.glob("data-*"):
            p.write_text(SECRET)
        shutil.rmtree(link)
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    line = one_line_error(rerun(inp, out))
    assert str(link) in line and "symbolic link" in line and "--force-overwrite" in line
    assert not (out / "a.jsonl").exists() and link.is_symlink()
    r = rerun(inp, out, "--force-overwrite")
    assert r.returncode == 0, r.stderr
    assert_finished_as_reference(out, ref)  # the secret is in no output
    assert secret.read_text() == SECRET and target.exists()  # the link went, not what it led to


def test_removing_the_linked_part_as_advised_redoes_its_unit(killed, tmp_path):
    inp, ref, out = killed
    part = next((out / STATE_DIR / PARTS_DIR).glob("a.jsonl.*/data-00000.jsonl"))
    part.unlink()
    part.symlink_to(secret_file(tmp_path))
    one_line_error(rerun(inp, out))
    part.unlink()  # "... or remove <the link>"
    r = rerun(inp, out)
    assert r.returncode == 0, r.stderr
    assert "is missing: the unit is done anew" in r.stderr
    assert_finished_as_reference(out, ref)


def test_a_fifo_in_the_state_is_refused_without_hanging(killed):
    inp, ref, out = killed
    part = next((out / STATE_DIR / PARTS_DIR).glob("a.jsonl.*/data-00000.jsonl"))
    part.unlink()
    os.mkfifo(part)
    # a subprocess with a time limit: a run that opened the FIFO would wait for a writer forever
    r = cli_process(["score", "--input-dir", inp, "--output-dir", out, "--no-progress", *SPLIT], env=FIXED_SCORER, timeout=60)
    line = one_line_error(r)
    assert str(part) in line and "no regular file" in line


def test_a_linked_final_marker_is_refused_by_score_and_select(killed_template, tmp_path):
    inp, ref, _ = killed_template
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    final = next((out / STATE_DIR / FINAL_DIR).glob("b.jsonl.*.json"))
    target = tmp_path / "elsewhere.json"
    shutil.move(final, target)
    final.symlink_to(target)
    line = one_line_error(run_cli(["select", "--input-dir", str(out), "--output-dir", str(tmp_path / "sel"), "--keep", "0.5",
                                   "--min-tokens", "0"]))
    assert final.name in line and "did not write" in line
    assert not (tmp_path / "sel").exists()
    line = one_line_error(rerun(inp, out))
    assert str(final) in line and "symbolic link" in line


def test_assembly_never_reads_a_part_through_a_link_made_after_planning(tmp_path):
    """The planning's check runs once; assembly opens each part itself with O_NOFOLLOW."""
    from scalingfilter.jobs.assemble import concat_bytes, concat_parquet

    link = tmp_path / "data-00000.jsonl"
    link.symlink_to(secret_file(tmp_path))
    with open(tmp_path / "joined", "wb") as fh:
        with pytest.raises(StateError, match="symbolic link"):
            concat_bytes([link], fh)
    assert (tmp_path / "joined").read_bytes() == b""
    with pytest.raises(StateError, match="symbolic link"):
        concat_parquet([link], tmp_path / "joined.parquet")


# ---- 6c: a '..' after a directory that does not exist

def test_an_output_path_through_a_missing_directory_is_refused_and_creates_nothing(killed_template, tmp_path):
    inp, ref, _ = killed_template
    foreign = tmp_path / "foreignL"
    foreign.mkdir()
    (foreign / "a.jsonl").write_text(SECRET)  # someone else's file of the name score would write
    line = one_line_error(score_cli(inp, f"{foreign}/sub/.."))
    assert "sub" in line and "'..'" in line
    assert sorted(os.listdir(foreign)) == ["a.jsonl"] and (foreign / "a.jsonl").read_text() == SECRET
    # select, to a new directory the same way: refused before anything (its lock included) is made
    line = one_line_error(run_cli(["select", "--input-dir", str(ref), "--output-dir", f"{foreign}/nosuch/..", "--keep", "0.5",
                                   "--min-tokens", "0"]))
    assert "nosuch" in line
    assert sorted(os.listdir(foreign)) == ["a.jsonl"]
    # the input the same way
    line = one_line_error(score_cli(f"{inp}/nosuch/..", tmp_path / "new"))
    assert "nosuch" in line and not (tmp_path / "new").exists() and not (inp / "nosuch").exists()


def test_a_parent_step_after_an_existing_directory_is_followed_as_the_system_does(killed_template, tmp_path):
    inp, ref, _ = killed_template
    (tmp_path / "here").mkdir()
    r = score_cli(inp, f"{tmp_path}/here/../new", *SPLIT)
    assert r.returncode == 0, r.stderr
    assert_finished_as_reference(tmp_path / "new", ref)


def test_a_link_in_place_of_the_lock_file_is_refused_and_its_target_untouched(tmp_path):
    from scalingfilter.errors import StorageError
    from scalingfilter.io.locks import JobLock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    (out / ".scalingfilter").mkdir(parents=True)
    (out / ".scalingfilter" / "lock").symlink_to(victim)
    with pytest.raises(StorageError, match="symbolic link"):
        JobLock(out, "score").acquire()
    assert victim.read_text() == "precious"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".scalingfilter").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(StorageError, match="symbolic link"):
        JobLock(linked, "score").acquire()
    assert list((tmp_path / "elsewhere").iterdir()) == []
