"""A run that lost its bucket lock never mixes its output with another run's: select, diversity and train (issue 20,
finding 6, second pass: 3b, 3c, 3d), and diversity never overwrites an output directory that is not its own (6f).

As in test_lock_loss.py (whose helpers these tests use): run A pauses at a fault point (`faults.STOP_AFTER_UNITS_ENV`:
SIGSTOP right after its Nth published file, embedded unit or published checkpoint) and is waited for by its process
state; once its heartbeat is older than the TTL, run B takes the prefix over and finishes; A resumes. A must stop with
one line (`LockLostError`, exit 2) before its next publish, and everything in the bucket must be B's, compared with an
independent computation (the same selection run locally, B's own working copy, B's settings). Without the checks
(before this fix) A published over B's finished output and exited 0.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("moto")
pytest.importorskip("psutil")

from scalingfilter.faults import STOP_AFTER_UNITS_ENV  # noqa: E402
from scalingfilter.testing import bucket_files, forget_filesystems, numbered_docs, one_line_error, run_cli, score_cli, write_jsonl  # noqa: E402
from test_lock_loss import TTL_S, env_for, finish, start, wait_stopped  # noqa: E402


def lost_line(rc: int, err: str, what: str) -> str:
    """A's one error line: it lost its lock (exit 2, no traceback)."""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, f"{what}: rc {rc}\n{err[-3000:]}"
    assert "lost its lock" in errors[0], errors
    return errors[0]


def pause_then_take_over(a_args: list[str], b_args: list[str], env_a: dict, env_b: dict) -> tuple[tuple[int, str], tuple[int, str]]:
    """A (a process) runs to its fault point and stops there; after the TTL, B runs to its end in this process (only
    A's pause needs a process boundary; B is any other run); then A resumes. Returns ((rc, stderr) of A, of B)."""
    a = start(a_args, env_a)
    try:
        wait_stopped(a)
        time.sleep(TTL_S + 1.1)  # A's heartbeat stopped with it: its lock is stale now (the store counts whole seconds)
        forget_filesystems()  # B's client: a fresh one, as a fresh process has
        b = run_cli(b_args, env={k: v for k, v in env_b.items() if os.environ.get(k) != v})
        result_b = (b.returncode, b.stderr)
        result_a = finish(a)
    finally:
        if a.poll() is None:
            a.kill()
    assert "taking over the lock" in result_b[1], result_b[1][-3000:]
    return result_a, result_b


def visible(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith(".scalingfilter/")}


# ---------------------------------------------------------------------------------------------
# 3b: select


def test_select_that_lost_its_lock_stops_and_the_output_is_the_other_runs(s3, bucket, tmp_path, monkeypatch):
    """A (random, keep 0.5) pauses after its first published file; B (keep 0.2, --force-overwrite) takes the prefix
    over and finishes; A must not publish its other files, its mask or its manifest. The bucket then holds exactly
    what the same selection as B's writes to a local directory (files and mask byte for byte)."""
    src, scored = tmp_path / "in", tmp_path / "scored"
    for f in range(3):
        write_jsonl(src / f"f{f}.jsonl", numbered_docs(20, start=20 * f))
    assert score_cli(src, scored).returncode == 0
    out = f"s3://{bucket}/sel"
    common = ["select", "--input-dir", str(scored), "--output-dir", out, "--method", "random", "--seed", "1", "--min-tokens", "0"]
    (rc_a, err_a), (rc_b, err_b) = pause_then_take_over(
        common + ["--keep", "0.5"], common + ["--keep", "0.2", "--force-overwrite"],
        env_for(s3, tmp_path, **{STOP_AFTER_UNITS_ENV: "1"}), env_for(s3, tmp_path))
    lost_line(rc_a, err_a, "select A")
    assert rc_b == 0, err_b[-3000:]

    local = tmp_path / "sel-b"  # B's selection, made here: what the bucket must hold
    from scalingfilter.stages.select import select_corpus

    select_corpus(scored, local, keep=0.2, method="random", seed=1, min_tokens=0)
    got = bucket_files(s3, out)
    manifest = json.loads(got["selection.json"])
    assert (manifest["keep"], manifest["documents_selected"]) == (0.2, 12)
    expected = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert sorted(visible(got)) == sorted(visible(expected)) == ["f0.jsonl", "f1.jsonl", "f2.jsonl", "selection.json"]
    for rel in ("f0.jsonl", "f1.jsonl", "f2.jsonl", ".scalingfilter/selection.npz"):
        assert got[rel] == expected[rel], rel
    assert sum(len(got[f"f{f}.jsonl"].splitlines()) for f in range(3)) == 12
    assert ".scalingfilter/selection.in-progress" not in got and ".scalingfilter/lock" not in got


# ---------------------------------------------------------------------------------------------
# 3c: diversity


def diversity_corpus(root: Path, sample_texts: list[str], n: int = 30) -> None:
    write_jsonl(root / "a.jsonl", [{"id": i, "text": f"{sample_texts[i % len(sample_texts)]} ({i})"} for i in range(n)])


DIVERSITY_FAST = ["--max-seq-length", "16", "--no-progress", "--device", "cpu", "--batch-size", "8"]


def test_diversity_that_lost_its_lock_publishes_nothing(s3, bucket, tmp_path, sample_texts):
    """A (seed 0) pauses after its first embedding unit (3 units of 10); B (seed 1, another spool: another machine)
    takes the prefix over and publishes its results; A resumes, embeds the rest and must publish nothing."""
    src = tmp_path / "in"
    diversity_corpus(src, sample_texts)
    out = f"s3://{bucket}/div"
    common = ["diversity", "--input-dir", str(src), "--output-dir", out, "--groups", "2", "--group-size", "12", *DIVERSITY_FAST]
    chunk = {"SCALINGFILTER_DIVERSITY_CHUNK": "10"}
    (rc_a, err_a), (rc_b, err_b) = pause_then_take_over(
        common + ["--seed", "0", "--full"], common + ["--seed", "1"],
        env_for(s3, tmp_path, **chunk, **{STOP_AFTER_UNITS_ENV: "1"}),
        env_for(s3, tmp_path, **chunk, SCALINGFILTER_SPOOL_DIR=str(tmp_path / "spool-b")))
    lost_line(rc_a, err_a, "diversity A")
    assert rc_b == 0, err_b[-3000:]
    got = bucket_files(s3, out)
    result = json.loads(got["results.json"])
    assert (result["seed"], result["full"], result["groups"], result["group_size"]) == (1, False, 2, 12)  # B's, not A's
    lines = got["results.txt"].decode().splitlines()
    assert [float(x) for x in lines[:2]] == result["scores"]  # both files of the same run
    meta = json.loads(got["embeddings.meta.json"])
    assert meta["rows"] == 24  # B's rows: its 2 groups of 12 (A embedded all 30)
    assert ".scalingfilter/lock" not in got


# ---------------------------------------------------------------------------------------------
# 3d: train


def test_train_that_lost_its_lock_publishes_nothing_more(s3, bucket, tmp_path, sample_texts):
    """A pauses right after its first published checkpoint (step 2 of 8); B (--resume, on another machine: its own
    spool) takes the prefix over, continues from that checkpoint and finishes; A resumes, trains on, and must stop
    before it publishes its next checkpoint. Every object in the bucket is then B's working copy's file, byte for byte."""
    import hashlib

    from test_training_bucket import CLI_SETTINGS

    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", [{"id": i, "text": " ".join(sample_texts[(i + k) % len(sample_texts)] for k in range(3))}
                                  for i in range(80)])
    out = f"s3://{bucket}/pair"
    common = ["train", "--input-dir", str(src), "--output-dir", out, *CLI_SETTINGS]
    spool_b = tmp_path / "spool-b"
    (rc_a, err_a), (rc_b, err_b) = pause_then_take_over(
        common, common + ["--resume"], env_for(s3, tmp_path, **{STOP_AFTER_UNITS_ENV: "1"}),
        env_for(s3, tmp_path, SCALINGFILTER_SPOOL_DIR=str(spool_b)))
    lost_line(rc_a, err_a, "train A")
    assert rc_b == 0, err_b[-3000:]
    got = visible(bucket_files(s3, out))
    b_copy = spool_b / f"train-{hashlib.sha1(out.encode()).hexdigest()[:16]}"
    assert json.loads(got["checkpoint.json"])["step"] == 8 and "train_log.json" in got
    log = json.loads(got["train_log.json"])
    assert log["command_config"]["output_dir"] == str(b_copy) and log["command_config"]["resume"] is True  # B's log
    for rel, data in got.items():
        assert data == (b_copy / rel).read_bytes(), rel  # B's files, none of A's
    assert ".scalingfilter/lock" not in bucket_files(s3, out)


# ---------------------------------------------------------------------------------------------
# 6f: diversity into an output directory that is not its own


def test_diversity_refuses_an_output_directory_that_is_not_its_own(tmp_path, sample_texts):
    """A results.json someone else wrote (or any other file) is not overwritten: one line, exit 2, nothing created;
    --force-overwrite writes into it anyway; a rerun into diversity's own output (and into an empty one) goes on."""
    src = tmp_path / "in"
    diversity_corpus(src, sample_texts, n=12)
    args = ["diversity", "--input-dir", str(src), "--groups", "1", "--group-size", "12", *DIVERSITY_FAST]
    theirs = b'{"accuracy": 0.93, "mean": "not ours"}\n'
    for name, body in [("results.json", theirs), ("notes.txt", b"mine\n"), ("results.txt", b"mine\n")]:
        out = tmp_path / f"foreign-{name}"
        out.mkdir()
        (out / name).write_bytes(body)
        line = one_line_error(run_cli(args + ["--output-dir", str(out)]))
        assert "no `scalingfilter diversity` output" in line and "--force-overwrite" in line and str(out) in line, line
        assert [p.name for p in out.iterdir()] == [name] and (out / name).read_bytes() == body  # nothing written, no lock

    out = tmp_path / "foreign-results.json"
    assert run_cli(args + ["--output-dir", str(out), "--force-overwrite"]).returncode == 0
    first = json.loads((out / "results.json").read_text())
    assert first["group_size"] == 12 and len(first["scores"]) == 1
    again = run_cli(args + ["--output-dir", str(out), "--load-from-cache"])  # its own output now: no flag needed
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "results.json").read_text())["scores"] == first["scores"]


def test_diversity_refuses_a_foreign_bucket_prefix_before_taking_its_lock(s3_env, bucket, tmp_path, sample_texts):
    from scalingfilter.testing import s3fs_for

    src = tmp_path / "in"
    diversity_corpus(src, sample_texts, n=12)
    fs = s3fs_for(s3_env)
    fs.pipe(f"{bucket}/fd1/results.json", b'{"score": 1}')
    out = f"s3://{bucket}/fd1"
    line = one_line_error(run_cli(["diversity", "--input-dir", str(src), "--output-dir", out, *DIVERSITY_FAST]))
    assert "no `scalingfilter diversity` output" in line and "results.json was not written by diversity" in line, line
    assert bucket_files(s3_env, out) == {"results.json": b'{"score": 1}'}  # untouched, and no lock left behind
