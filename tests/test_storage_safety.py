"""The I/O layer's safety: the spool is private; a process is judged across PID namespaces by more than its
pid; keys with glob characters are literal; s3a:// is s3:// in the output-in-input check; `//` in a URL is
refused; names of 240 bytes fit their temporaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scalingfilter.cli.app import main as cli
from scalingfilter.errors import LockedError, StorageError, UsageError
from scalingfilter.io import locations
from scalingfilter.io.locations import location
from scalingfilter.testing import bucket_files, upload_dir

SCORE_ARGS = ["--unit-docs", "10", "--split-bytes", "0", "--no-progress"]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def dead_pid() -> int:
    """A pid no process of this namespace has now (a child, reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def data_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """Outputs a run promises to be byte-identical (its state, summary and manifest name times and places)."""
    return {k: v for k, v in files.items() if not k.startswith(".scalingfilter") and k not in ("summary.json", "selection.json")}


def write_corpus(root: Path, names: list[str], docs: int = 25) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        lines = [json.dumps({"id": i, "text": f"document {i} of file {n}, " + "word " * (3 + (i * 7 + n) % 17)}) for i in range(docs)]
        (root / name).write_text("\n".join(lines) + "\n")


@pytest.fixture
def fixed_scorer(monkeypatch):
    monkeypatch.setenv("SCALINGFILTER_TEST_SCORER", "fixed")


# ---------------------------------------------------------------------------------------------
# The spool directory is this user's own


@pytest.fixture
def default_spool(tmp_path, monkeypatch):
    """Where the default spool goes ($TMPDIR/scalingfilter-spool-UID), in a temporary directory."""
    monkeypatch.delenv(locations.SPOOL_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"scalingfilter-spool-{os.getuid()}"


def test_a_fresh_spool_is_made_0700(default_spool, tmp_path, monkeypatch):
    assert locations.spool_dir() == default_spool
    assert default_spool.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv(locations.SPOOL_ENV, str(tmp_path / "mine" / "spool"))
    d = locations.spool_dir()
    assert d == tmp_path / "mine" / "spool" and d.stat().st_mode & 0o777 == 0o700
    f = locations.spool_file("a.jsonl.gz")
    assert f.parent == d and f.name.endswith("-a.jsonl.gz")


def test_a_spool_another_user_may_write_to_is_refused(default_spool):
    default_spool.mkdir()
    os.chmod(default_spool, 0o777)  # pre-created by someone else for everyone
    with pytest.raises(StorageError) as err:
        locations.spool_file("a.jsonl")
    msg = one_line(err.value)
    assert str(default_spool) in msg and "may be written by other users (mode 0777)" in msg
    assert "remove it" in msg and locations.SPOOL_ENV in msg
    assert list(default_spool.iterdir()) == []  # nothing written into it
    os.chmod(default_spool, 0o1777)  # sticky does not make it private
    with pytest.raises(StorageError, match="may be written by other users"):
        locations.spool_dir()


def test_a_spool_that_is_a_symbolic_link_is_refused(default_spool, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    default_spool.symlink_to(target)
    with pytest.raises(StorageError) as err:
        locations.spool_dir()
    assert "is a symbolic link" in one_line(err.value) and str(default_spool) in str(err.value)
    default_spool.unlink()
    default_spool.write_text("")  # a file
    with pytest.raises(StorageError, match="is not a directory"):
        locations.spool_dir()


def test_a_spool_of_another_user_is_refused(default_spool, tmp_path, monkeypatch):
    default_spool.mkdir(mode=0o700)
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 4242)  # as if it had been made by another user
    monkeypatch.setenv(locations.SPOOL_ENV, str(default_spool))  # the same check for a spool the user names
    with pytest.raises(StorageError) as err:
        locations.spool_dir()
    msg = one_line(err.value)
    assert f"belongs to another user (uid {real}" in msg and locations.SPOOL_ENV in msg


def test_a_spool_of_ours_that_others_may_only_read_is_tightened(tmp_path, monkeypatch):
    """Older versions made the spool 0755: nobody else could write to it, so it is made 0700, not refused."""
    d = tmp_path / "spool"
    d.mkdir()
    os.chmod(d, 0o755)
    monkeypatch.setenv(locations.SPOOL_ENV, str(d))
    assert locations.spool_dir() == d and d.stat().st_mode & 0o777 == 0o700
    os.chmod(d, 0o770)  # group-writable: refused
    with pytest.raises(StorageError, match="mode 0770"):
        locations.spool_dir()


def test_a_run_to_a_bucket_with_a_shared_spool_stops_with_one_line(s3_env, bucket, tmp_path, monkeypatch, fixed_scorer, capsys):
    corpus = tmp_path / "in"
    write_corpus(corpus, ["a.jsonl"])
    shared = tmp_path / "shared-spool"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv(locations.SPOOL_ENV, str(shared))
    assert cli(["score", "--input-dir", str(corpus), "--output-dir", f"s3://{bucket}/out", *SCORE_ARGS]) == 2
    err = capsys.readouterr().err
    assert "may be written by other users" in err and str(shared) in err and "Traceback" not in err
    assert not any(k.endswith(".jsonl") for k in bucket_files(s3_env, f"s3://{bucket}/out"))
    assert list(shared.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# A pid is not a process: PID namespaces (containers on one host) and recycled pids


def test_process_state_needs_the_namespace_and_the_start_time():
    me = locations.process_identity()
    assert {"pid", "host", "boot", "pidns", "pstart", "token"} <= set(me)
    assert locations.process_state(dict(me)) == "self"
    other = {**me, "token": "0" * 16}
    if me["pidns"] is None:
        pytest.skip("no /proc here: no PID namespaces either")
    assert locations.process_state(other) == "alive"  # this pid, this namespace, this start time: it is this process
    # the same pid in another PID namespace (another container of this host) is another process: not ours to judge
    assert locations.process_state({**other, "pidns": me["pidns"] + 1}) == "unknown"
    assert locations.process_state({**other, "pid": dead_pid(), "pidns": me["pidns"] + 1}) == "unknown"
    # this namespace, a live pid that started at another time: a recycled pid, the recorded process is gone
    assert locations.process_state({**other, "pstart": me["pstart"] + 1}) == "gone"
    assert locations.process_state({**other, "pid": dead_pid()}) == "gone"
    # a record without namespace and start time (pid and host alone) says nothing
    assert locations.process_state({"pid": os.getpid(), "host": me["host"]}) == "unknown"
    assert locations.process_state({"pid": dead_pid(), "host": me["host"]}) == "unknown"
    assert locations.process_state({**other, "boot": "another-boot"}) == "unknown"
    assert locations.process_state({**other, "host": "another-host"}) == "unknown"


def _lock_record(**fields) -> bytes:
    return json.dumps({"command": "score", "started": "then", **fields}).encode()


def test_a_lock_held_from_another_namespace_is_not_taken_over_while_its_heartbeat_is_fresh(s3_env, bucket, monkeypatch):
    from scalingfilter.io.locks import LOCK_TTL_ENV, JobLock

    me = locations.process_identity()
    if me["pidns"] is None:
        pytest.skip("no /proc here")
    monkeypatch.setenv(LOCK_TTL_ENV, "60")
    out = location(f"s3://{bucket}/out")
    lock = out / ".scalingfilter" / "lock"
    # a live run in another container of this host: its pid is free here (or someone else's), its heartbeat fresh
    for pid in (dead_pid(), 1, os.getpid()):
        lock.write_bytes(_lock_record(pid=pid, host=me["host"], boot=me["boot"], pidns=me["pidns"] + 1, pstart=5, token="f" * 16))
        with pytest.raises(LockedError, match="in use by another run"):
            JobLock(out, "score").acquire()
        assert json.loads(lock.read_bytes())["token"] == "f" * 16  # untouched
    # the same with a record of an older version (pid and host only)
    lock.write_bytes(_lock_record(pid=dead_pid(), host=me["host"]))
    with pytest.raises(LockedError):
        JobLock(out, "score").acquire()


def test_a_lock_whose_pid_was_recycled_here_is_taken_over_at_once(s3_env, bucket, monkeypatch):
    from scalingfilter.io.locks import LOCK_TTL_ENV, JobLock

    me = locations.process_identity()
    if me["pidns"] is None:
        pytest.skip("no /proc here")
    monkeypatch.setenv(LOCK_TTL_ENV, "600")
    out = location(f"s3://{bucket}/out")
    lock = out / ".scalingfilter" / "lock"
    # this namespace; the pid lives (it is this process) but started at another time: the holder is gone
    lock.write_bytes(_lock_record(pid=os.getpid(), host=me["host"], boot=me["boot"], pidns=me["pidns"], pstart=me["pstart"] - 1,
                                  token="e" * 16))
    held = JobLock(out, "score").acquire()
    assert json.loads(lock.read_bytes())["token"] == me["token"]
    held.release()
    assert not lock.exists()
    # the holder is a live process of this namespace: refused however the pid compares
    lock.write_bytes(_lock_record(**{**me, "token": "d" * 16}))
    with pytest.raises(LockedError):
        JobLock(out, "score").acquire()


def test_release_leaves_a_lock_another_process_with_the_same_pid_took(s3_env, bucket, monkeypatch):
    from scalingfilter.io.locks import JobLock

    me = locations.process_identity()
    out = location(f"s3://{bucket}/out")
    lock = out / ".scalingfilter" / "lock"
    held = JobLock(out, "score").acquire()
    taker = {**me, "pidns": (me["pidns"] or 0) + 1, "token": "c" * 16}  # same pid and host, another container
    lock.write_bytes(json.dumps(taker).encode())
    held.release()
    assert lock.exists() and json.loads(lock.read_bytes())["token"] == "c" * 16


def test_clean_spool_judges_only_processes_of_its_own_namespace(tmp_path, monkeypatch):
    me = locations.process_identity()
    if me["pidns"] is None:
        pytest.skip("no /proc here")
    monkeypatch.setenv(locations.SPOOL_ENV, str(tmp_path / "spool"))
    spool = locations.spool_dir()
    ours = locations.spool_prefix()
    tag = ours.split("@", 1)[1].split(".", 1)[0]
    gone = dead_pid()
    names = {
        "live, this process": f"{ours}aaaa-a.jsonl",
        "another namespace, its pid free here": f".tmp-{gone}@{'0' * 8}.77-bbbb-b.jsonl",
        "another namespace, its pid someone else's here": f".tmp-{os.getpid()}@{'1' * 8}.77-cccc-c.jsonl",
        "older version, fresh": f".tmp-{gone}-dddddddd-d.jsonl",
        "gone, this namespace": f".tmp-{gone}@{tag}.{me['pstart']}-eeee-e.jsonl",
        "recycled pid, this namespace": f".tmp-{os.getpid()}@{tag}.{me['pstart'] - 1}-ffff-f.jsonl",
        "old foreign": f".tmp-{gone}@{'2' * 8}.77-gggg-g.jsonl",
        "older version, a day old": f".tmp-{gone}-hhhhhhhh-h.jsonl",
    }
    for what, name in names.items():
        (spool / name).write_text(what)
    (spool / f"{ours}out-dir").mkdir()
    week = time.time() - 8 * 24 * 3600
    os.utime(spool / names["old foreign"], (week, week))
    os.utime(spool / names["older version, a day old"], (week, week))
    locations.clean_spool()
    left = {p.read_text() if p.is_file() else p.name for p in spool.iterdir()}
    assert left == {"live, this process", "another namespace, its pid free here", "another namespace, its pid someone else's here",
                    "older version, fresh", f"{ours}out-dir"}


# ---------------------------------------------------------------------------------------------
# Keys are literal: * ? [ ] in names


GLOB_NAMES = ["q?x=1.jsonl", "star*.jsonl", "data[1].jsonl", "plain.jsonl"]


def test_names_with_glob_characters_score_and_select_to_their_own_keys(s3_env, bucket, tmp_path, fixed_scorer):
    corpus = tmp_path / "in"
    write_corpus(corpus, GLOB_NAMES)
    write_corpus(corpus / "sub[x]", ["d?.jsonl"], docs=5)  # one unit: assembled by a server-side copy
    upload_dir(s3_env, corpus, f"s3://{bucket}/in")
    local, remote = tmp_path / "local", f"s3://{bucket}"
    for root, src in ((str(local), str(corpus)), (remote, f"{remote}/in")):
        assert cli(["score", "--input-dir", src, "--output-dir", f"{root}/scored", *SCORE_ARGS]) == 0
        assert cli(["select", "--input-dir", f"{root}/scored", "--output-dir", f"{root}/kept", "--keep", "0.5",
                    "--method", "random", "--seed", "3"]) == 0
        assert cli(["score", "--input-dir", src, "--output-dir", f"{root}/scored", *SCORE_ARGS]) == 0  # a rerun: nothing to do
    got = bucket_files(s3_env, remote)
    for d in ("scored", "kept"):
        want = data_files(files_of(local / d))
        assert set(want) == {*GLOB_NAMES, "sub[x]/d?.jsonl"}
        assert data_files({k[len(d) + 1:]: v for k, v in got.items() if k.startswith(f"{d}/")}) == want, d
    assert not any("/parts/" in k or k.endswith("/lock") for k in got)


def test_object_path_operations_take_keys_literally(s3_env, bucket):
    from scalingfilter.io.storage import read_json_dir

    base = location(f"s3://{bucket}/lit")
    for name in ("a?.json", "a1.json", "ab.json", "[a].json", "a.json", "*.json"):
        (base / "d" / name).write_bytes(json.dumps(name).encode())
    assert read_json_dir(base / "d") == {n: n for n in ("a?.json", "a1.json", "ab.json", "[a].json", "a.json", "*.json")}
    (base / "copy" / "x*.json").copy_from(base / "d" / "a?.json")
    assert sorted((base / "copy").find()) == ["x*.json"] and (base / "copy" / "x*.json").read_bytes() == b'"a?.json"'
    (base / "d" / "*.json").unlink()
    assert len((base / "d").names()) == 5
    (base / "d").rmtree()
    assert (base / "d").find() == {}


# ---------------------------------------------------------------------------------------------
# s3a:// is s3://; // in a URL


def test_aliases_of_a_protocol_and_bucket_case_are_one_store_in_the_containment_check():
    assert locations.contains(location("s3://b/in2"), location("s3a://b/in2/o"))
    assert locations.contains(location("s3a://b/in2"), location("s3://b/in2"))
    assert locations.contains(location("s3n://b/in2/"), location("s3://b/in2/o/p"))
    assert locations.contains(location("gcs://b/in"), location("gs://b/in/o"))
    assert locations.contains(location("S3://B/in"), location("s3://b/in/o"))
    assert not locations.contains(location("s3://b/in2"), location("s3a://b/in20"))
    assert not locations.contains(location("s3://b/in2"), location("gs://b/in2/o"))
    assert not locations.contains(location("s3://b/in2"), location("s3://c/in2/o"))


def test_an_output_inside_the_input_under_another_alias_is_refused(s3_env, bucket, tmp_path, fixed_scorer, capsys):
    corpus = tmp_path / "in"
    write_corpus(corpus, ["a.jsonl"])
    upload_dir(s3_env, corpus, f"s3://{bucket}/in2")
    assert cli(["score", "--input-dir", f"s3://{bucket}/in2", "--output-dir", f"s3a://{bucket}/in2/o", *SCORE_ARGS]) == 2
    err = capsys.readouterr().err
    assert "inside the input directory" in err and "Traceback" not in err
    assert set(bucket_files(s3_env, f"s3://{bucket}/in2")) == {"a.jsonl"}


def test_an_empty_path_component_in_a_url_is_refused_with_one_line(s3_env, bucket, tmp_path, fixed_scorer, capsys):
    with pytest.raises(UsageError) as err:
        location("s3://b//in2/o2")
    assert "empty path component" in one_line(err.value) and "s3://b/in2/o2" in str(err.value)
    assert str(location("s3://b/in2/o2/")) == "s3://b/in2/o2"  # a trailing slash is fine
    corpus = tmp_path / "in"
    write_corpus(corpus, ["f01.jsonl"])
    assert cli(["score", "--input-dir", str(corpus), "--output-dir", f"s3://{bucket}//in2/o2", *SCORE_ARGS]) == 2
    err_text = capsys.readouterr().err
    assert "empty path component" in err_text and "Traceback" not in err_text
    assert bucket_files(s3_env, f"s3://{bucket}") == {}


# ---------------------------------------------------------------------------------------------
# Names up to NAME_MAX


LONG = "n" * 234 + ".jsonl"  # 240 bytes: legal, too long for a temporary name that adds ~20 characters


def test_temporary_names_fit_name_max_and_still_say_what_they_stand_for():
    from scalingfilter.io.storage import tmp_key, tmp_name, tmp_target

    for name in (LONG, "é" * 120 + ".jsonl.gz", "a.jsonl", "x" * 255):
        tmp = tmp_name(Path("/d") / name)
        assert len(tmp.name.encode()) <= 255, name
        assert tmp_target(tmp.name) == tmp_key(name)
        assert tmp.name.endswith(locations.name_suffixes(name))
        assert len(locations.spool_file(name).name.encode()) <= 255
    assert tmp_key("a.jsonl") == "a.jsonl" and tmp_key(LONG) != tmp_key("m" + LONG[1:])


def test_a_240_byte_input_name_scores_locally_and_through_the_spool(s3_env, bucket, tmp_path, fixed_scorer):
    corpus = tmp_path / "in"
    write_corpus(corpus, [LONG, "short.jsonl"])
    write_corpus(corpus / "sub", ["m" * 234 + ".jsonl"], docs=5)  # 240 bytes too, one unit
    local = tmp_path / "out"
    assert cli(["score", "--input-dir", str(corpus), "--output-dir", str(local), *SCORE_ARGS]) == 0
    want = data_files(files_of(local))
    assert set(want) == {LONG, "short.jsonl", "sub/" + "m" * 234 + ".jsonl"}
    assert cli(["select", "--input-dir", str(local), "--output-dir", str(tmp_path / "kept"), "--keep", "0.5", "--method", "random"]) == 0
    assert LONG in files_of(tmp_path / "kept")
    remote = f"s3://{bucket}/out"
    assert cli(["score", "--input-dir", str(corpus), "--output-dir", remote, *SCORE_ARGS]) == 0
    assert data_files(bucket_files(s3_env, remote)) == want
    upload_dir(s3_env, corpus, f"s3://{bucket}/in")  # read from the bucket too: prefetched into the spool under a short name
    assert cli(["score", "--input-dir", f"s3://{bucket}/in", "--output-dir", f"s3://{bucket}/out2", *SCORE_ARGS]) == 0
    assert data_files(bucket_files(s3_env, f"s3://{bucket}/out2")) == want


def test_a_files_done_markers_are_found_whatever_its_name_holds(tmp_path):
    """The done-marker glob takes the key's characters literally: data[1].jsonl's markers match it (a character
    class would match nothing, and a restart would redo or misjudge its units), and no other file's do."""
    import fnmatch

    from scalingfilter.jobs.state import DONE_DIR, StateLayout

    layout = StateLayout(tmp_path)
    done = layout.dir(DONE_DIR)
    done.mkdir(parents=True)
    for source in ("data[1].jsonl", "data1.jsonl", "q?x=1.jsonl", "star*.jsonl", "qax=1.jsonl"):
        for part in (0, 1):
            layout.done(source, part).write_text("{}")
    for source in ("data[1].jsonl", "q?x=1.jsonl", "star*.jsonl"):
        found = sorted(p.name for p in done.glob(layout.done_glob(source)))
        assert found == sorted(layout.done(source, k).name for k in (0, 1)), (source, found)
        assert all(fnmatch.fnmatchcase(n, layout.done_glob(source)) for n in found)
