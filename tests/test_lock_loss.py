"""A run that lost its lock never mixes its output with another run's (issue 20, finding 6).

The lock of an output prefix in a bucket (`locks.ObjectLock`) is taken over once its heartbeat is older than
SCALINGFILTER_LOCK_TTL_S: a holder paused longer than that (SIGSTOP, a frozen VM, a long GC) has lost it.
When it resumes it must notice before it publishes anything (a part file, a done marker, an assembled file,
the summary) and stop with one line, leaving the output to the run that took over.

Every pause here is placed by a fault point (`faults.STOP_AFTER_UNITS_ENV`: SIGSTOP right after the Nth unit
was marked done) and waited for by the process state, not by sleeping and hoping; the only sleep waits for
the TTL itself to run out. The server is moto's standalone S3 server (the `s3` and `bucket` fixtures of
conftest.py), which honours conditional writes (If-None-Match, If-Match) as S3 does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("moto")
psutil = pytest.importorskip("psutil")

from scalingfilter.faults import STOP_AFTER_UNITS_ENV  # noqa: E402
from scalingfilter.io.locks import LOCK_TTL_ENV  # noqa: E402
from scalingfilter.testing import S3_TEST_CREDENTIALS, bucket_files  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TTL_S = 1  # the store's clock counts in whole seconds: a lock is stale 2.1 s after its last heartbeat at most
SHORT, LONG = "alpha beta gamma", "one two three four five six seven"  # `text` and `text2`: the fixed scorer's n_tokens tells them apart
FILES, DOCS = 2, 40


def env_for(endpoint: str, tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(S3_TEST_CREDENTIALS, AWS_ENDPOINT_URL=endpoint, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               SCALINGFILTER_TEST_SCORER="fixed", SCALINGFILTER_SPOOL_DIR=str(tmp_path / "spool"), **{LOCK_TTL_ENV: str(TTL_S)})
    env.update(extra)
    return env


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_stopped(proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    """Until the process stopped itself at its fault point (or fail, with what it printed)."""
    deadline = time.monotonic() + timeout_s
    p = psutil.Process(proc.pid)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (status {proc.returncode}) before its fault point:\n{err[-3000:]}")
        if p.status() == psutil.STATUS_STOPPED:
            return
        time.sleep(0.05)
    pytest.fail("the run did not reach its fault point")


def finish(proc: subprocess.Popen, timeout_s: float = 240.0) -> tuple[int, str]:
    if psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, err


def make_input(root: Path) -> None:
    root.mkdir()
    for f in range(FILES):
        lines = [json.dumps({"id": f"{f}-{i}", "text": SHORT, "text2": LONG}) for i in range(DOCS)]
        (root / f"f{f:02d}.jsonl").write_text("\n".join(lines) + "\n")


def outputs(s3: str, url: str) -> dict[str, list[dict]]:
    return {k: [json.loads(line) for line in v.decode().splitlines()]
            for k, v in bucket_files(s3, url).items() if k.endswith(".jsonl") and not k.startswith(".scalingfilter")}


def test_a_run_whose_lock_was_taken_over_stops_before_publishing_and_the_output_is_the_other_runs(s3, bucket, tmp_path):
    """Run A (text) pauses after its first unit for longer than the TTL; run B (text2, --force-overwrite) takes the
    lock over and pauses after its own first unit; A resumes while B holds the lock, then B resumes. A must stop
    with one line before its next publish; B finishes, and every output record is B's, each input document once.
    (Without the check A filled B's state with its own units and assembled files of both runs' parts, exit 0.)"""
    src = tmp_path / "in"
    make_input(src)
    out = f"s3://{bucket}/out"
    common = ["score", "--input-dir", str(src), "--output-dir", out, "--unit-docs", "10", "--split-bytes", "0", "--no-progress"]
    a = start(common + ["--text-field", "text"], env_for(s3, tmp_path, **{STOP_AFTER_UNITS_ENV: "1"}))
    try:
        wait_stopped(a)
        time.sleep(TTL_S + 1.1)  # A's heartbeat stopped with it: its lock is stale now
        b = start(common + ["--text-field", "text2", "--force-overwrite"], env_for(s3, tmp_path, **{STOP_AFTER_UNITS_ENV: "1"}))
        try:
            wait_stopped(b)  # B took the lock over and marked its first unit done
            lock = json.loads(bucket_files(s3, out)[".scalingfilter/lock"])
            assert lock["pid"] == b.pid
            rc_a, err_a = finish(a)  # A resumes while B (paused) holds the lock
            rc_b, err_b = finish(b)
        finally:
            if b.poll() is None:
                b.kill()
    finally:
        if a.poll() is None:
            a.kill()
    assert "taking over the lock" in err_b, err_b
    errors_a = [line for line in err_a.splitlines() if "error:" in line]
    assert rc_a == 2 and len(errors_a) == 1 and "Traceback" not in err_a, err_a
    assert "lost its lock" in errors_a[0] and f"pid {b.pid}" in errors_a[0], errors_a
    assert rc_b == 0, err_b
    got = outputs(s3, out)
    assert sorted(got) == [f"f{f:02d}.jsonl" for f in range(FILES)]
    for name, records in got.items():
        assert [r["id"] for r in records] == [f"{int(name[1:3])}-{i}" for i in range(DOCS)], name  # each document once, in order
        assert {r["n_tokens"] for r in records} == {len(LONG.split())}, name  # all scored on text2, by B
    summary = json.loads(bucket_files(s3, out)["summary.json"])
    assert summary["settings"]["text_field"] == "text2" and summary["documents"] == FILES * DOCS
    assert ".scalingfilter/lock" not in bucket_files(s3, out)  # B released its lock; A left it alone


def test_the_lock_object_says_who_holds_it_and_a_taken_over_holder_neither_publishes_nor_beats(s3_env, bucket, monkeypatch):
    """In one process, deterministic: a takeover is another lease in the lock object. The holder's `check_held`,
    a worker's check (`Job.check_held` with the lease it was sent), and the heartbeat all see it; the heartbeat's
    conditional write (If-Match) does not put the old holder back."""
    from scalingfilter.io.locations import location
    from scalingfilter.io.objects import ObjectChanged
    from scalingfilter.io.locks import JobLock, LockLostError, ObjectLock, check_lease

    monkeypatch.setenv(LOCK_TTL_ENV, "3600")  # no heartbeat of its own during the test: beats are called by hand
    out = location(f"s3://{bucket}/out")
    lock = JobLock(out, "score").acquire()
    try:
        assert isinstance(lock, ObjectLock)
        lock.check_held()  # held: no error
        check_lease(lock.path, lock.lease)  # as a worker process checks, with the lease its driver sent
        assert lock.beat()  # its own heartbeat refreshes it
        theirs = {"pid": 1, "host": "another-host", "command": "score", "lease": "f" * 16, "token": "e" * 16, "started": "now"}
        ours = lock._etag
        assert ours is not None  # the store gave the version it wrote (If-Match needs it)
        lock.path.write_bytes(json.dumps(theirs).encode())  # another run took it over (as acquire does after the TTL)
        with pytest.raises(ObjectChanged):  # the conditional overwrite the heartbeat makes: refused by the server
            lock.path.replace_if_match(b"{}", ours)
        with pytest.raises(LockLostError, match="lost its lock.*another-host"):
            check_lease(lock.path, lock.lease)
        assert not lock.beat()  # the conditional heartbeat fails: the other run's lock stays
        assert json.loads(lock.path.read_bytes())["lease"] == theirs["lease"]
        with pytest.raises(LockLostError, match="lost its lock"):
            lock.check_held()
    finally:
        lock.release()
    assert json.loads(lock.path.read_bytes())["lease"] == theirs["lease"]  # release leaves the other run's lock


def test_a_local_lock_check_is_free(tmp_path):
    """flock cannot be lost while its holder lives: the check does nothing (no file is even read)."""
    from scalingfilter.io.locks import JobLock

    with JobLock(tmp_path / "out", "score") as lock:
        (lock.path).unlink()  # even with the lock file gone, the check costs nothing and does not refuse
        t0 = time.perf_counter()
        for _ in range(10_000):
            lock.check_held()
        assert time.perf_counter() - t0 < 0.5
