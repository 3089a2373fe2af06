"""The output's state directory: nothing from outside the job steers it.

- a crafted state marker (absolute, '..', or not its own key) is refused, never followed (nothing deleted);
- an output directory that contains the input is refused;
- a non-empty OUT that is no score output is refused unless --force-overwrite (a killed run's restart continues);
- a refused run creates nothing (no OUT/.scalingfilter/lock); the walker passes over the tool's own state
  directory without a warning; a rerun repairs what select's advice says it repairs.

The fixed scorer (no model) and the CLI in-process keep these fast.
"""

from __future__ import annotations

import json
import logging

import pytest

from scalingfilter.cli.app import main
from scalingfilter.jobs.state import FINAL_DIR, PLANS_DIR, state_key

DOCS = [{"text": f"document number {i} with a few words"} for i in range(6)]


@pytest.fixture(autouse=True)
def fixed_scorer(monkeypatch):
    monkeypatch.setenv("SCALINGFILTER_TEST_SCORER", "fixed")


def corpus(root, names=("a.jsonl", "b.jsonl")):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return root


def score(inp, out, *extra) -> int:
    return main(["score", "--input-dir", str(inp), "--output-dir", str(out), "--no-progress", *extra])


# ---- crafted state markers


def _plant(out, kind, source, key_of=None):
    """A marker in OUT's state naming `source`, under the key of `key_of` (default: its own)."""
    d = out / ".scalingfilter" / kind
    d.mkdir(parents=True, exist_ok=True)
    marker = d / f"{state_key(key_of if key_of is not None else source)}.json"
    marker.write_text(json.dumps({"source": source, "size": 1, "mtime_ns": 1, "records": 1, "rejected": 0,
                                  "n_records": None, "unit_docs": 100000, "split_bytes": 64 << 20}))
    return marker


@pytest.mark.parametrize("kind", [FINAL_DIR, PLANS_DIR])
@pytest.mark.parametrize("how", ["absolute", "dotdot", "mismatched", "keyed-non-output"])
def test_crafted_marker_is_refused_and_deletes_nothing(tmp_path, capsys, kind, how):
    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    assert score(inp, out) == 0
    outside = tmp_path / "victim.jsonl"
    outside.write_text("precious\n")
    inside = out / "notes.jsonl"  # inside OUT, but no output of this input
    inside.write_text("precious too\n")
    source = {"absolute": str(outside), "dotdot": "../victim.jsonl", "mismatched": "notes.jsonl", "keyed-non-output": "notes.txt"}[how]
    if how == "keyed-non-output":
        (out / "notes.txt").write_text("mine\n")
    marker = _plant(out, kind, source, key_of="zzz.jsonl" if how == "mismatched" else None)
    capsys.readouterr()
    assert score(inp, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and marker.name in err[0] and "--force-overwrite" in err[0], err
    assert outside.read_text() == "precious\n" and inside.read_text() == "precious too\n"
    if how == "keyed-non-output":
        assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / "a.jsonl").exists() and (out / "summary.json").exists() and marker.exists()  # nothing changed
    # --force-overwrite discards the crafted marker without following its path
    assert score(inp, out, "--force-overwrite") == 0
    assert outside.read_text() == "precious\n" and inside.read_text() == "precious too\n"
    assert not marker.exists() and (out / "summary.json").exists()
    assert score(inp, out) == 0  # and the state is clean again


def test_crafted_marker_refused_in_fresh_state(tmp_path, capsys):
    """A state holding only a crafted final marker (no earlier run): refused before the lock or any directory."""
    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    victim = tmp_path / "victim.jsonl"
    victim.write_text("x\n")
    marker = _plant(out, FINAL_DIR, "../victim.jsonl")
    assert score(inp, out) == 2
    assert victim.exists()
    assert sorted(p.name for p in (out / ".scalingfilter").iterdir()) == [FINAL_DIR, "lock"] or \
        sorted(p.name for p in (out / ".scalingfilter").iterdir()) == [FINAL_DIR]
    assert marker.exists()


# ---- OUT containing IN


def test_output_containing_input_is_refused(tmp_path, capsys):
    ov = tmp_path / "ov"
    inp = corpus(ov / "in")
    corpus(inp / "in", names=("a.jsonl",))  # ov/in/in/a.jsonl: its output would be ov/in/a.jsonl
    before = (inp / "a.jsonl").read_bytes()
    assert score(inp, ov) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must not be, contain or lie inside" in err[0], err
    assert (inp / "a.jsonl").read_bytes() == before
    assert not (ov / ".scalingfilter").exists()  # nothing created
    assert score(inp, ov, "--force-overwrite") == 2  # not even with --force-overwrite
    assert (inp / "a.jsonl").read_bytes() == before


# ---- foreign files in OUT


def test_foreign_output_dir_is_refused_then_forced(tmp_path, capsys):
    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "a.jsonl").write_text("someone else's\n")
    (out / "summary.json").write_text('{"theirs": true}\n')
    assert score(inp, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.jsonl" in err[0] and "--force-overwrite" in err[0], err
    assert (out / "a.jsonl").read_text() == "someone else's\n"
    assert (out / "summary.json").read_text() == '{"theirs": true}\n'
    assert not (out / ".scalingfilter").exists()  # nothing created, not even the lock
    assert score(inp, out, "--force-overwrite") == 0
    assert "quality_factor" in (out / "a.jsonl").read_text()
    assert score(inp, out) == 0  # now it is ours


def test_other_jobs_state_is_refused(tmp_path, capsys):
    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    (out / ".scalingfilter").mkdir(parents=True)
    (out / ".scalingfilter" / "selection.npz").write_bytes(b"x")
    (out / "selection.json").write_text("{}")
    assert score(inp, out) == 2
    assert "another kind of job" in capsys.readouterr().err
    assert (out / "selection.json").read_text() == "{}"


@pytest.mark.parametrize("leftover", ["empty-state", "lock-only", "temporary"])
def test_own_leftovers_are_ours(tmp_path, leftover):
    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    (out / ".scalingfilter").mkdir(parents=True)
    if leftover == "lock-only":
        (out / ".scalingfilter" / "lock").write_text("")
    if leftover == "temporary":
        (out / ".tmp-123-0123abcd-a.jsonl").write_text("half\n")
    assert score(inp, out) == 0
    assert not (out / ".tmp-123-0123abcd-a.jsonl").exists()


def test_restart_with_partial_outputs_continues(tmp_path):
    """A killed run's state (markers, some outputs, no summary) is ours: the rerun continues."""
    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    assert score(inp, out) == 0
    (out / "summary.json").unlink()
    (out / "b.jsonl").unlink()
    for p in (out / ".scalingfilter" / FINAL_DIR).glob(f"{state_key('b.jsonl')}.json"):
        p.unlink()
    assert score(inp, out) == 0
    assert (out / "b.jsonl").exists() and (out / "summary.json").exists()


# ---- a refused run creates nothing; the walker is silent about the tool's own state


def test_refused_run_creates_nothing(tmp_path):
    inp = corpus(tmp_path / "in")
    inner = inp / "out"  # OUT inside IN: refused before the lock
    assert score(inp, inner) == 2
    assert not inner.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert score(empty, tmp_path / "o2") == 2  # no input files
    assert not (tmp_path / "o2").exists()


def test_walker_is_silent_about_the_tools_state(tmp_path, caplog):
    from scalingfilter.io.walk import walk_corpus, warn_skipped

    d = corpus(tmp_path / "sel", names=("a.jsonl",))
    (d / ".scalingfilter").mkdir()
    (d / ".scalingfilter" / "selection.npz").write_bytes(b"x")
    (d / ".other").mkdir()
    (d / ".other" / "x.jsonl").write_text("{}\n")
    walk = walk_corpus(d)
    assert walk.files == ["a.jsonl"]
    assert [p for p, _ in walk.skipped] == [".other"]  # another hidden name is still named
    with caplog.at_level(logging.WARNING, logger="scalingfilter"):
        warn_skipped(walk)
    assert ".scalingfilter" not in caplog.text and ".other" in caplog.text


# ---- select's advice "rerun score, which repairs it" holds


def test_rerun_repairs_a_missing_output_and_an_unreadable_marker(tmp_path):
    from scalingfilter.jobs.state import InconsistentScoredDirError, ScoredDir

    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    assert score(inp, out) == 0
    (out / "a.jsonl").unlink()  # "listed as scored but missing"
    with pytest.raises(InconsistentScoredDirError, match="repairs it"):
        ScoredDir.open(out).data_files()
    assert score(inp, out) == 0
    files, expected = ScoredDir.open(out).data_files()
    assert files == ["a.jsonl", "b.jsonl"] and expected == {"a.jsonl": 6, "b.jsonl": 6}
    (out / ".scalingfilter" / FINAL_DIR / f"{state_key('b.jsonl')}.json").write_text("{not json")  # "final marker unreadable"
    with pytest.raises(InconsistentScoredDirError, match="repairs it"):
        ScoredDir.open(out).data_files()
    assert score(inp, out) == 0
    files, expected = ScoredDir.open(out).data_files()
    assert expected == {"a.jsonl": 6, "b.jsonl": 6}


def test_rerun_repairs_an_edited_output(tmp_path):
    from scalingfilter.jobs.state import InconsistentScoredDirError, ScoredDir
    from scalingfilter.io.records import count_records

    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    assert score(inp, out) == 0
    lines = (out / "a.jsonl").read_text().splitlines(keepends=True)
    (out / "a.jsonl").write_text("".join(lines[:-1]))  # a record lost by hand: "has 5 records, its final marker says 6"
    d = ScoredDir.open(out)
    files, expected = d.data_files()
    with pytest.raises(InconsistentScoredDirError, match="repairs it"):
        d.check_counts(files, [count_records(out / f) for f in files], expected)
    assert score(inp, out) == 0
    d = ScoredDir.open(out)
    files, expected = d.data_files()
    d.check_counts(files, [count_records(out / f) for f in files], expected)


def test_an_engine_started_without_preflight_still_refuses(tmp_path):
    """`Job.prepare` makes the preflight's checks when an engine was started without them (score_with_ray)."""
    from scalingfilter.jobs.engines.local import run_local
    from scalingfilter.jobs.job import Job
    from scalingfilter.jobs.plan import ForeignOutputError
    from scalingfilter.stages.score import ScoreConfig

    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "a.jsonl").write_text("theirs\n")
    with pytest.raises(ForeignOutputError):
        run_local(Job(*ScoreConfig(str(inp), str(out), show_progress=False).to_job()))
    assert (out / "a.jsonl").read_text() == "theirs\n"


# ---- the same in a bucket


def test_bucket_foreign_output_and_output_containing_input(s3_env, bucket, tmp_path, capsys):
    from scalingfilter.testing import s3fs_for

    fs = s3fs_for(s3_env)
    local = corpus(tmp_path / "in")
    for name in ("a.jsonl", "b.jsonl"):
        fs.pipe(f"{bucket}/ov/in/{name}", (local / name).read_bytes())
    fs.pipe(f"{bucket}/out/a.jsonl", b"someone else's\n")
    assert score(f"s3://{bucket}/ov/in", f"s3://{bucket}/out") == 2
    assert "a.jsonl" in capsys.readouterr().err
    assert fs.cat(f"{bucket}/out/a.jsonl") == b"someone else's\n"
    assert not fs.exists(f"{bucket}/out/.scalingfilter/lock")  # nothing created
    assert score(f"s3://{bucket}/ov/in", f"s3a://{bucket}/ov") == 2  # OUT holds IN (an alias of s3://)
    assert "must not be, contain or lie inside" in capsys.readouterr().err
    assert not fs.exists(f"{bucket}/ov/.scalingfilter")
    assert score(f"s3://{bucket}/ov/in", f"s3://{bucket}/out", "--force-overwrite") == 0
    assert b"quality_factor" in fs.cat(f"{bucket}/out/a.jsonl")
    assert score(f"s3://{bucket}/ov/in", f"s3://{bucket}/out") == 0


def test_crafted_plan_counts_are_refused(tmp_path, capsys):
    inp, out = corpus(tmp_path / "in"), tmp_path / "out"
    assert score(inp, out) == 0
    marker = out / ".scalingfilter" / PLANS_DIR / f"{state_key('a.jsonl')}.json"
    content = json.loads(marker.read_text())
    marker.write_text(json.dumps({**content, "n_records": "many"}))
    assert score(inp, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and marker.name in err[0], err
