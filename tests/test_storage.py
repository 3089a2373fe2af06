"""Object storage: every test talks to a real S3 API server, moto's standalone `moto_server`,
started on 127.0.0.1 by the fixtures (no mock of the client library). Where a connection must drop, a
small TCP proxy sits between the client and the server and cuts it at a fixed byte count.

Runs score with input and output in buckets and compares the bytes with the same run on local paths."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from scalingfilter.testing import (S3_TEST_CREDENTIALS, bucket_files, forget_filesystems, free_port, s3fs_for,  # noqa: E402
                                   start_moto_server, stop_process, upload_dir)
from scalingfilter.testing import run_cli as run_cli_here  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


CREDS = S3_TEST_CREDENTIALS
# the fixtures s3 (a moto server for the module), s3_env (this process talks to it) and bucket are in conftest.py


def env_for(endpoint: str, tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDS, AWS_ENDPOINT_URL=endpoint, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               SCALINGFILTER_SPOOL_DIR=str(tmp_path / "spool"))
    env.update(extra)
    return env


def run_cli(args, env):
    """The CLI in this process with `env` (env_for's) as its environment's AWS_* and settings: no process boundary
    is under test. Cached filesystems keep the endpoint and credentials they were made with: forgotten before and after."""
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("AWS_") and k not in env]:
            mp.delenv(k)
        for k, v in env.items():
            if os.environ.get(k) != v:
                mp.setenv(k, v)
        forget_filesystems()
        try:
            return run_cli_here(args)
        finally:
            forget_filesystems()


def run_process(args, env, timeout=240):
    """The CLI in a new process (a kill, an import-time stand-in)."""
    return subprocess.run([PY, "-m", "scalingfilter.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def make_corpus(root: Path, n: int = 60) -> None:
    """JSONL (plain, gzip, zstd, in a subdirectory), parquet of several row groups, a bad line, a hidden file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root.mkdir(parents=True)
    words = "the quick brown fox jumps over a lazy dog while seven wise owls watch".split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(5 + i % 23)) for i in range(n)]
    lines = [json.dumps({"id": i, "text": t, "big": 2**70 + i}) for i, t in enumerate(texts)]
    (root / "a.jsonl").write_text("\n".join(lines[:25]) + "\nnot json\n")
    (root / "sub").mkdir()
    (root / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines[25:40]) + "\n").encode(), mtime=0))
    (root / "sub" / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines[40:]) + "\n").encode()))
    pq.write_table(pa.table({"text": texts[:33], "id": list(range(33))}), root / "d.parquet", row_group_size=8)
    (root / ".hidden.jsonl").write_text(lines[0] + "\n")


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def results(files: dict[str, bytes]) -> dict[str, bytes]:
    """What a score run promises to be identical: data files, rejects files, final markers' counts."""
    out = {}
    for rel, data in files.items():
        if rel.startswith(".scalingfilter/final/"):
            marker = json.loads(data)
            out[rel] = json.dumps({k: v for k, v in marker.items() if k not in ("size", "mtime_ns", "etag")}, sort_keys=True).encode()
        elif not rel.startswith(".scalingfilter") and rel != "summary.json":
            out[rel] = data
    return out


SCORE_FIXED = {"SCALINGFILTER_TEST_SCORER": "fixed"}
SPLIT = ["--unit-docs", "10", "--split-bytes", "0", "--no-progress"]
# where the server goes away: botocore's retries bounded, so that giving up takes a second, not half a minute
FEW_RETRIES = ["--storage-option", "config_kwargs.retries.max_attempts=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "in"
    make_corpus(root)
    return root


@pytest.fixture(scope="module")
def local_reference(corpus, tmp_path_factory):
    """The fixed-scorer run on local paths that bucket runs must equal."""
    out = tmp_path_factory.mktemp("ref") / "out"
    r = run_cli(["score", "--input-dir", str(corpus), "--output-dir", str(out), *SPLIT], env=dict(os.environ, **SCORE_FIXED))
    assert r.returncode == 3, r.stderr  # one bad line rejected
    return local_files(out)


# ---------------------------------------------------------------------------------------------
# score in buckets


def test_score_in_buckets_with_the_model_pair_is_byte_identical_to_local(s3_env, bucket, corpus, tiny_pair_dir, tmp_path):
    from scalingfilter.stages.score import score_corpus

    s3 = s3_env
    options = dict(pair=str(tiny_pair_dir), max_len=64, device="cpu", unit_docs=10, split_bytes=0, show_progress=False)
    score_corpus(corpus, tmp_path / "local", **options)
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    summary = score_corpus(f"s3://{bucket}/in", f"s3://{bucket}/out", **options)
    got, expected = bucket_files(s3, f"s3://{bucket}/out"), local_files(tmp_path / "local")
    assert results(got) == results(expected)
    assert {"a.jsonl", "sub/b.jsonl.gz", "sub/c.jsonl.zst", "d.parquet", "rejects/a.jsonl.rejects.jsonl"} <= set(got)
    assert not any(k.startswith(".scalingfilter/parts/") or k.startswith(".scalingfilter/done/") for k in got)  # cleaned up
    assert ".scalingfilter/lock" not in got  # released
    assert json.loads(got["summary.json"]) == json.loads(json.dumps(summary))
    assert summary["documents"] == 61 + 33 and summary["rejected"] == 1 and summary["files_done"] == 4
    assert summary["input_dir"] == f"s3://{bucket}/in"
    assert summary["skipped_paths"] == {"hidden (name starts with '.')": 1}
    assert not list((tmp_path / "spool").glob("*"))  # prefetched copies and temporaries removed


def test_input_in_bucket_output_local_and_the_reverse(s3_env, bucket, corpus, local_reference, tmp_path):
    from scalingfilter.stages.score import fixed_scorer_spec, score_corpus

    s3 = s3_env
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    options = dict(unit_docs=10, split_bytes=0, show_progress=False, scorer=fixed_scorer_spec())
    score_corpus(f"s3://{bucket}/in", tmp_path / "out", **options)
    assert results(local_files(tmp_path / "out")) == results(local_reference)
    score_corpus(corpus, f"s3://{bucket}/out2", **options)
    assert results(bucket_files(s3, f"s3://{bucket}/out2")) == results(local_reference)


def test_kill_9_mid_run_then_restart_gives_identical_output(s3, bucket, corpus, local_reference, tmp_path):
    """The documented hook SIGKILLs the run right after it marked N units done (in the bucket); the lock object
    the dead run left is taken over (its pid is gone on this host); the restart does only what was left."""
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    out = f"s3://{bucket}/out"
    args = ["score", "--input-dir", f"s3://{bucket}/in", "--output-dir", out, *SPLIT]
    killed = run_process(args, env=env_for(s3, tmp_path, SCALINGFILTER_TEST_KILL_AFTER_UNITS="3", **SCORE_FIXED))
    assert killed.returncode == -signal.SIGKILL
    left = bucket_files(s3, out)
    assert ".scalingfilter/lock" in left and "summary.json" not in left  # died mid-job, holding the lock
    assert list((tmp_path / "spool").glob(".tmp-*"))  # and its local copy of the input it was reading
    markers = [json.loads(v) for k, v in left.items() if k.startswith((".scalingfilter/done/", ".scalingfilter/final/"))]
    done_before = sum(m["records"] for m in markers)
    assert len([k for k in left if k.startswith(".scalingfilter/done/")]) + len([m for m in markers if "source" in m]) >= 1
    assert 0 < done_before < 94
    final = run_cli(args, env=env_for(s3, tmp_path, **SCORE_FIXED))
    assert final.returncode == 3, final.stderr
    assert "taking over the lock" in final.stderr
    assert not list((tmp_path / "spool").glob(".tmp-*"))  # the dead run's spool files removed, and the restart's own
    got = bucket_files(s3, out)
    assert results(got) == results(local_reference)
    summary = json.loads(got["summary.json"])
    assert summary["documents"] == 94 and summary["documents_this_run"] == 94 - done_before  # only what was left


def test_a_live_run_holds_the_prefix(s3, bucket, tmp_path, monkeypatch):
    """The lock object is created with a conditional PUT: a second holder is refused, naming the first."""
    from scalingfilter.errors import LockedError
    from scalingfilter.io.locations import location
    from scalingfilter.io.locks import JobLock, ObjectLock

    for k, v in {**CREDS, "AWS_ENDPOINT_URL": s3}.items():
        monkeypatch.setenv(k, v)
    out = location(f"s3://{bucket}/out")
    first = JobLock(out, "score")
    assert isinstance(first, ObjectLock)
    with first:
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            JobLock(out, "select").acquire()
        corpus = tmp_path / "in"
        corpus.mkdir()
        (corpus / "x.jsonl").write_text('{"text": "a b"}\n')
        r = run_cli(["score", "--input-dir", str(corpus), "--output-dir", str(out), "--no-progress"], env=env_for(s3, tmp_path, **SCORE_FIXED))
        assert r.returncode == 2 and "in use by another run" in r.stderr and "Traceback" not in r.stderr
    assert not (out / ".scalingfilter" / "lock").exists()
    with JobLock(out, "score"):  # released: free again
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):  # a node part never beside a whole-prefix run
            JobLock(out, "score", "lock.parts-0-0").acquire()
    assert not (out / ".scalingfilter" / "lock.parts-0-0").exists()  # the refused part stepped back
    with JobLock(out, "score", "lock.parts-0-0"), JobLock(out, "score", "lock.parts-1-1"):  # parts together: fine
        with pytest.raises(LockedError, match=r"node part 0-0: score pid \d+.*node part 1-1: score pid"):
            JobLock(out, "score").acquire()
        assert not (out / ".scalingfilter" / "lock").exists()


def test_a_lock_of_another_host_is_taken_over_only_after_its_heartbeat_stopped(s3_env, bucket, monkeypatch):
    from scalingfilter.errors import LockedError
    from scalingfilter.io.locations import location
    from scalingfilter.io.locks import LOCK_TTL_ENV, JobLock

    out = location(f"s3://{bucket}/out")
    lock = out / ".scalingfilter" / "lock"
    lock.write_bytes(json.dumps({"pid": 1, "host": "another-host", "command": "score", "started": "then"}).encode())
    monkeypatch.setenv(LOCK_TTL_ENV, "60")
    with pytest.raises(LockedError, match="another-host"):
        JobLock(out, "score").acquire()  # its heartbeat is fresh: it may be alive
    monkeypatch.setenv(LOCK_TTL_ENV, "1")
    deadline = time.monotonic() + 30
    while True:  # no heartbeat for longer than the TTL: taken over (the store's clock counts in whole seconds)
        try:
            held = JobLock(out, "score").acquire()
            break
        except LockedError:
            assert time.monotonic() < deadline, "a lock without a heartbeat for 30 s was never taken over"
            time.sleep(0.1)  # polling the condition, not a guess at the store's clock
    assert json.loads(lock.read_bytes())["pid"] == os.getpid()
    held.release()
    assert not lock.exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing half-written


def test_missing_bucket_is_one_line(s3, tmp_path, corpus):
    env = env_for(s3, tmp_path, **SCORE_FIXED)
    r = run_cli(["score", "--input-dir", "s3://no-such-bucket/in", "--output-dir", str(tmp_path / "out"), "--no-progress"], env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the bucket 'no-such-bucket' does not exist" in r.stderr.strip().splitlines()[-1]
    r = run_cli(["score", "--input-dir", str(corpus), "--output-dir", "s3://no-such-bucket/out", "--no-progress"], env=env)
    assert r.returncode == 2 and "the bucket 'no-such-bucket' does not exist" in r.stderr and "Traceback" not in r.stderr


def test_url_of_a_missing_filesystem_names_the_extra(tmp_path):
    # the dev extra installs gcsfs: a module of that name that fails to import stands for an installation without it
    shadow = tmp_path / "shadow" / "gcsfs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named gcsfs (test stand-in)')\n")
    env = dict(os.environ, **SCORE_FIXED, PYTHONPATH=str(tmp_path / "shadow"))
    r = run_process(["score", "--input-dir", "gs://some-bucket/in", "--output-dir", str(tmp_path / "out"), "--no-progress"], env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pip install 'scalingfilter[gcs]'" in r.stderr


def test_storage_option_reaches_the_filesystem(s3, bucket, corpus, local_reference, tmp_path):
    """No endpoint in the environment: --storage-option endpoint_url=... (as for MinIO or Ceph) finds the server."""
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    env = env_for(s3, tmp_path, **SCORE_FIXED)
    del env["AWS_ENDPOINT_URL"]
    r = run_cli(["score", "--input-dir", f"s3://{bucket}/in", "--output-dir", f"s3://{bucket}/out", *SPLIT,
                 "--storage-option", f"endpoint_url={s3}", "--storage-option", "client_kwargs.region_name=us-east-1"], env=env)
    assert r.returncode == 3, r.stderr
    assert results(bucket_files(s3, f"s3://{bucket}/out")) == results(local_reference)
    r = run_cli(["score", "--input-dir", f"s3://{bucket}/in", "--output-dir", f"s3://{bucket}/out3", "--storage-option", "novalue"], env=env)
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr


@pytest.fixture(scope="module")
def s3_with_auth():
    """A second server that checks credentials (IAM): the first requests (the set-up) go unchecked."""
    proc, endpoint = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "5"})
    try:
        import boto3

        kw = dict(endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1")
        boto3.client("s3", **kw).create_bucket(Bucket="guarded")  # 1
        boto3.client("s3", **kw).put_object(Bucket="guarded", Key="in/x.jsonl", Body=b'{"text": "one two"}\n')  # 2
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="reader")  # 3
        key = iam.create_access_key(UserName="reader")["AccessKey"]  # 4
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))  # 5
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        stop_process(proc)


def test_wrong_credentials_and_no_write_permission_are_one_line(s3_with_auth, tmp_path):
    endpoint, key_id, secret = s3_with_auth
    env = env_for(endpoint, tmp_path, **SCORE_FIXED)
    wrong = dict(env, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG0", AWS_SECRET_ACCESS_KEY="wrong")
    r = run_cli(["score", "--input-dir", "s3://guarded/in", "--output-dir", str(tmp_path / "out"), "--no-progress"], env=wrong)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "permission denied" in r.stderr and "check the credentials" in r.stderr
    # a user whose policy allows reading only (moto's IAM checks it)
    reader = dict(env, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "x.jsonl").write_text('{"text": "one two"}\n')
    r = run_cli(["score", "--input-dir", str(corpus), "--output-dir", "s3://guarded/out", "--no-progress"], env=reader)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write s3://guarded/out/.scalingfilter/lock: permission denied" in r.stderr


class CuttingProxy:
    """A TCP proxy to the S3 server that, once `limit` bytes went one way (`upstream`: requests; else
    responses), cuts every connection and stops listening: to the client, the server went away mid-transfer.
    `limit=None` passes everything; `cut_once` cuts that one connection only and goes on serving."""

    def __init__(self, target: str, limit: int | None, upstream: bool, cut_once: bool = False):
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.limit, self.upstream, self.cut_once = limit, upstream, cut_once
        self.count = 0
        self.cuts = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src, dst, upstream):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream == self.upstream and self.limit is not None:
                    with self.lock:
                        room = self.limit - self.count
                        self.count += len(data)
                    if room < len(data):
                        dst.sendall(data[:max(room, 0)])
                        self.cuts += 1
                        if self.cut_once:
                            self.limit = None
                            for s in (src, dst):
                                try:
                                    s.shutdown(socket.SHUT_RDWR)
                                except OSError:
                                    pass
                        else:
                            self.stop()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self.stopped = True
        for s in [self.listener, *self.conns]:
            try:
                s.shutdown(socket.SHUT_RDWR)  # the peer sees the connection end now, not when the fd is freed
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


def test_an_upload_cut_by_the_server_going_away_leaves_no_partial_object(s3, bucket, tmp_path):
    """The run writes its outputs through a proxy that goes away after 200 kB of requests, in the middle of
    the upload of a 600 kB output file: a one-line error, exit 2, and no object at a final key that is not
    the complete file (the same run to the end is the reference)."""
    corpus = tmp_path / "in"
    corpus.mkdir()
    lines = [json.dumps({"text": f"document {i} " + "word " * 40}) + "\n" for i in range(2000)]
    (corpus / "a.jsonl").write_text("".join(lines[:200]))
    (corpus / "b.jsonl").write_text("".join(lines))
    ref = tmp_path / "ref"
    r = run_cli(["score", "--input-dir", str(corpus), "--output-dir", str(ref), "--no-progress"], env=env_for(s3, tmp_path, **SCORE_FIXED))
    assert r.returncode == 0, r.stderr
    proxy = CuttingProxy(s3, limit=200_000, upstream=True)
    try:  # a process of its own: the lock object it cannot remove is taken over below because its pid is gone
        r = run_process(["score", "--input-dir", str(corpus), "--output-dir", f"s3://{bucket}/out", "--no-progress", *FEW_RETRIES],
                    env=env_for(proxy.url, tmp_path, **SCORE_FIXED))
    finally:
        proxy.stop()
    assert proxy.cuts >= 1  # the cut landed
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("scalingfilter score: error: cannot write s3://")
    left = bucket_files(s3, f"s3://{bucket}/out")
    expected = local_files(ref)
    for rel, data in left.items():
        if not rel.startswith(".scalingfilter/"):
            assert data == expected[rel], rel  # whatever is at a final key is complete
    assert "b.jsonl" not in left and "summary.json" not in left
    assert results(left).keys() <= results(expected).keys()
    # the server is back (the proxy gone, straight to it): the same command finishes the job
    r = run_cli(["score", "--input-dir", str(corpus), "--output-dir", f"s3://{bucket}/out", "--no-progress"], env=env_for(s3, tmp_path, **SCORE_FIXED))
    assert r.returncode == 0, r.stderr
    assert results(bucket_files(s3, f"s3://{bucket}/out")) == results(expected)


def test_a_read_cut_mid_file_is_retried_then_a_clear_error_naming_the_object(s3, bucket, tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "big.jsonl").write_text("".join(json.dumps({"text": f"document {i} " + "word " * 40}) + "\n" for i in range(3000)))
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    ref = run_cli(["score", "--input-dir", str(corpus), "--output-dir", str(tmp_path / "ref"), "--no-progress"], env=env_for(s3, tmp_path, **SCORE_FIXED))
    assert ref.returncode == 0
    # one connection cut in the middle of the object's bytes: retried, and the output is the same
    once = CuttingProxy(s3, limit=300_000, upstream=False, cut_once=True)
    r = run_cli(["score", "--input-dir", f"s3://{bucket}/in", "--output-dir", str(tmp_path / "once"), "--no-progress"], env=env_for(once.url, tmp_path, **SCORE_FIXED))
    once.stop()
    assert once.cuts == 1 and r.returncode == 0, r.stderr
    assert local_files(tmp_path / "once")["big.jsonl"] == local_files(tmp_path / "ref")["big.jsonl"]
    # the server gone for good mid-file: retried, then one line naming the object, nothing at the final key
    gone = CuttingProxy(s3, limit=300_000, upstream=False)
    r = run_cli(["score", "--input-dir", f"s3://{bucket}/in", "--output-dir", str(tmp_path / "gone"), "--no-progress", *FEW_RETRIES],
                env=env_for(gone.url, tmp_path, **SCORE_FIXED))
    gone.stop()
    assert gone.cuts >= 1
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"s3://{bucket}/in/big.jsonl" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "gone" / "big.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# The location layer itself


def test_remote_reader_streams_parquet_by_row_group_and_compressed_jsonl(s3, bucket, corpus, monkeypatch):
    from scalingfilter.io.records import read_records
    from scalingfilter.io.walk import iter_corpus, walk_corpus

    for k, v in {**CREDS, "AWS_ENDPOINT_URL": s3}.items():
        monkeypatch.setenv(k, v)
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    walk = walk_corpus(f"s3://{bucket}/in")
    local = walk_corpus(corpus)
    assert walk.files == local.files and walk.skipped == local.skipped
    for rel in walk.files:
        a = [(r.index, r.data, r.error is None) for r in read_records(walk.root / rel, rel, start=3, stop=20)]
        b = [(r.index, r.data, r.error is None) for r in read_records(corpus / rel, rel, start=3, stop=20)]
        assert a == b and a, rel
    assert [r.data for r in iter_corpus(f"s3://{bucket}/in")] == [r.data for r in iter_corpus(corpus)]


def test_writers_and_atomic_write_on_urls_put_only_finished_objects(s3, bucket, monkeypatch):
    from scalingfilter.io.records import read_records
    from scalingfilter.io.writers import open_writer, write_records
    from scalingfilter.io import storage
    from scalingfilter.io.locations import location

    for k, v in {**CREDS, "AWS_ENDPOINT_URL": s3}.items():
        monkeypatch.setenv(k, v)
    target = location(f"s3://{bucket}/w/x.jsonl.gz")
    with pytest.raises(RuntimeError):
        with storage.atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    with pytest.raises(RuntimeError):
        writer = open_writer(target)
        try:
            writer.write({"text": "x"})
            raise RuntimeError("crash mid-write")
        finally:
            writer.close()
    assert not target.exists()
    write_records(target, [{"text": "a"}, {"text": "b"}])
    assert [r.text for r in read_records(target, "x")] == ["a", "b"]
    storage.write_json_atomic(f"s3://{bucket}/w/m.json", {"k": 1})
    assert storage.read_json(f"s3://{bucket}/w/m.json") == {"k": 1}


def test_parse_storage_options():
    from scalingfilter.errors import UsageError
    from scalingfilter.io.locations import parse_storage_options

    assert parse_storage_options(["anon=true", "client_kwargs.region_name=eu-west-1", "max_concurrency=4", "endpoint_url=http://h:9000"]) == {
        "anon": True, "client_kwargs": {"region_name": "eu-west-1"}, "max_concurrency": 4, "endpoint_url": "http://h:9000"}
    with pytest.raises(UsageError):
        parse_storage_options(["=x"])


# ---------------------------------------------------------------------------------------------
# The other commands on URLs


def test_score_select_report_diversity_in_buckets_equal_local(s3_env, bucket, corpus, tmp_path):
    """The whole chain with every input and output in the bucket gives what it gives on local paths."""
    from scalingfilter.cli import app as cli

    s3 = s3_env
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    local, remote = tmp_path / "local", f"s3://{bucket}"
    os.environ["SCALINGFILTER_TEST_SCORER"] = "fixed"
    try:
        for root, src in ((str(local), str(corpus)), (remote, f"{remote}/in")):
            assert cli.main(["score", "--input-dir", src, "--output-dir", f"{root}/scored", *SPLIT]) == 3
            assert cli.main(["select", "--input-dir", f"{root}/scored", "--output-dir", f"{root}/selected", "--keep", "0.5",
                             "--method", "random", "--seed", "3"]) == 0
            assert cli.main(["report", "--input-dir", f"{root}/scored", "--output-dir", f"{root}/report", "--selected", f"{root}/selected",
                             "--examples", "2"]) == 0
            assert cli.main(["diversity", "--input-dir", f"{root}/selected", "--output-dir", f"{root}/diversity", "--groups", "2",
                             "--group-size", "8", "--max-seq-length", "32", "--no-progress"]) == 0
    finally:
        del os.environ["SCALINGFILTER_TEST_SCORER"]
    got = bucket_files(s3, remote)
    want = {f"{d}/{k}": v for d in ("scored", "selected", "report", "diversity") for k, v in local_files(local / d).items()}
    assert results({k[len("scored/"):]: v for k, v in got.items() if k.startswith("scored/")}) == \
        results({k[len("scored/"):]: v for k, v in want.items() if k.startswith("scored/")})
    for name in ("a.jsonl", "sub/b.jsonl.gz", "sub/c.jsonl.zst", "d.parquet", ".scalingfilter/selection.npz"):
        assert got[f"selected/{name}"] == want[f"selected/{name}"], name  # the same records kept, the same bytes
    assert {k for k in got if k.startswith("report/") and not k.startswith("report/.")} == \
        {k for k in want if k.startswith("report/") and not k.startswith("report/.")}
    stats_local, stats_remote = json.loads(want["report/stats.json"]), json.loads(got["report/stats.json"])
    assert stats_remote["examples"] == stats_local["examples"] and stats_remote["threshold"] == stats_local["threshold"]
    div_local, div_remote = json.loads(want["diversity/results.json"]), json.loads(got["diversity/results.json"])
    assert div_remote["documents_scored"] == div_local["documents_scored"] == 16
    assert div_remote["scores"] == pytest.approx(div_local["scores"], rel=1e-6)  # the same documents drawn and embedded
    assert not any(k.endswith("/.scalingfilter/lock") for k in got)


def test_diversity_cache_in_a_bucket_is_reused_and_never_torn(s3_env, bucket, corpus, monkeypatch, capsys, tmp_path):
    """The embedding cache is published with the results and copied down by --load-from-cache; a publish
    cut after the new embeddings but before their meta leaves no meta in the bucket, so the next run
    recomputes instead of trusting old meta over new rows."""
    from scalingfilter.cli import app as cli
    from scalingfilter.errors import StorageError
    from scalingfilter.io.objects import ObjectPath

    s3, out = s3_env, f"s3://{bucket}/div"
    args = ["diversity", "--input-dir", str(corpus), "--output-dir", out, "--groups", "2", "--group-size", "8",
            "--max-seq-length", "32", "--no-progress"]
    assert cli.main(args) == 0
    assert f"see {out}/rejects.jsonl" in capsys.readouterr().out  # the URL as given, not a path that ate a slash
    first = bucket_files(s3, out)
    assert "embeddings.meta.json" in first and json.loads(first["results.json"])["embedding"]["cached_rows_used"] == 0
    assert cli.main([*args, "--load-from-cache"]) == 0
    again = json.loads(bucket_files(s3, out)["results.json"])
    assert again["embedding"]["cached_rows_used"] == 16  # every row came from the bucket's cache
    assert again["scores"] == json.loads(first["results.json"])["scores"]

    real_put = ObjectPath.put_from

    def put_then_cut(self, local):  # the connection drops right after the new embeddings went up
        real_put(self, local)
        if self.name == "embeddings.npy":
            raise StorageError(f"cannot write {self}: connection cut")  # what translated() raises after retries

    monkeypatch.setattr(ObjectPath, "put_from", put_then_cut)
    assert cli.main([*args, "--seed", "7"]) != 0  # other rows embedded: a new cache
    monkeypatch.setattr(ObjectPath, "put_from", real_put)
    torn = bucket_files(s3, out)
    assert torn["embeddings.npy"] != first["embeddings.npy"] and "embeddings.meta.json" not in torn
    assert cli.main([*args, "--load-from-cache"]) == 0
    assert json.loads(bucket_files(s3, out)["results.json"])["embedding"]["cached_rows_used"] == 0  # recomputed, not trusted
    # a rerun on input without a bad record leaves no earlier rejects.jsonl behind (a publish only adds objects)
    assert "rejects.jsonl" in bucket_files(s3, out)
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "a.jsonl").write_text("".join(json.dumps({"text": f"clean document {i} " * 3}) + "\n" for i in range(20)))
    assert cli.main([*args[:2], str(clean), *args[3:]]) == 0
    assert "rejects.jsonl" not in bucket_files(s3, out)


@pytest.mark.slow
def test_ray_engine_on_buckets_equals_local(s3, bucket, corpus, local_reference, tmp_path, monkeypatch, ray_cluster):
    """Ray workers share no disk: the filesystem options travel with the job's configuration (no AWS
    environment in the workers), the state lives in the bucket, and the output is the local engine's."""
    from scalingfilter.jobs.engines.ray import RayOptions, score_with_ray
    from scalingfilter.stages.score import ScoreConfig, fixed_scorer_spec

    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    options = {"key": CREDS["AWS_ACCESS_KEY_ID"], "secret": CREDS["AWS_SECRET_ACCESS_KEY"], "endpoint_url": s3}
    cfg = ScoreConfig(f"s3://{bucket}/in", f"s3://{bucket}/ray", unit_docs=10, split_bytes=0, show_progress=False,
                      scorer=fixed_scorer_spec(), storage_options=options)
    summary = score_with_ray(cfg, RayOptions(workers=2))  # on conftest.ray_cluster: its workers have no AWS_* settings
    assert summary["failed_units"] == [] and summary["documents"] == 94
    assert results(bucket_files(s3, f"s3://{bucket}/ray")) == results(local_reference)


@pytest.mark.slow
def test_torchrun_two_processes_on_buckets_equal_local(s3, bucket, corpus, local_reference, tmp_path):
    """torchrun: rank 0 takes the lock object and plans; both ranks read the plan from the bucket and score
    their share; the output is the single-process local run's."""
    upload_dir(s3, corpus, f"s3://{bucket}/in")
    env = env_for(s3, tmp_path, **SCORE_FIXED)
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "scalingfilter/quality_factor.py",
                        "--input_dir", f"s3://{bucket}/in", "--output_dir", f"s3://{bucket}/two", *SPLIT], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    # rank 0 exits 3 (the bad line rejected), which torchrun reports as its own failure, 1
    assert r.returncode == 1 and "1 record(s) rejected" in r.stderr and "exitcode: 3" in r.stderr, r.stderr[-3000:]
    got = bucket_files(s3, f"s3://{bucket}/two")
    assert results(got) == results(local_reference)
    assert json.loads(got["summary.json"])["processes"] == 2


def test_a_streamed_read_cut_mid_file_is_retried(s3_env, bucket, tmp_path):
    """Prefetch off (as for a file above prefetch_bytes): the records stream through ranged reads, and a
    connection cut in the middle of the object is retried, the output the same as from the disk."""
    from scalingfilter.stages.score import fixed_scorer_spec, score_corpus

    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "big.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": f"doc {i} " + "word " * (i % 50)}) + "\n"
                                                                 for i in range(20000)).encode(), mtime=0))
    upload_dir(s3_env, corpus, f"s3://{bucket}/in")
    options = dict(show_progress=False, scorer=fixed_scorer_spec())
    score_corpus(corpus, tmp_path / "ref", **options)
    size = (corpus / "big.jsonl.gz").stat().st_size
    once = CuttingProxy(s3_env, limit=size // 2, upstream=False, cut_once=True)
    try:
        score_corpus(f"s3://{bucket}/in", tmp_path / "streamed", prefetch_bytes=0, storage_options={"endpoint_url": once.url}, **options)
    finally:
        once.stop()
    assert once.cuts == 1
    assert (tmp_path / "streamed" / "big.jsonl.gz").read_bytes() == (tmp_path / "ref" / "big.jsonl.gz").read_bytes()


def test_train_reads_its_corpus_from_a_bucket(s3_env, bucket, corpus):
    """train's inputs go through the walker: the same texts, split the same way, and a corpus fingerprint that
    changes when an object is rewritten (so a resumed run notices a changed corpus in a bucket too)."""
    from scalingfilter.stages.train.data import corpus_fingerprint, read_texts

    upload_dir(s3_env, corpus, f"s3://{bucket}/in")
    local = read_texts(corpus, "text", 0, 0.2)
    remote = read_texts(f"s3://{bucket}/in", "text", 0, 0.2)
    assert remote[0] == local[0] and remote[1] == local[1] and local[0]
    before = corpus_fingerprint(f"s3://{bucket}/in")
    assert corpus_fingerprint(f"s3://{bucket}/in") == before
    s3fs_for(s3_env).pipe_file(f"{bucket}/in/a.jsonl", b'{"text": "rewritten"}\n')
    assert corpus_fingerprint(f"s3://{bucket}/in") != before


def test_evaluate_on_a_bucket_equals_local(s3_env, bucket, tmp_path):
    from scalingfilter.stages.evaluate import evaluate_dir
    from scalingfilter.stages.score import fixed_scorer_spec, score_corpus

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "x.jsonl").write_text("".join(json.dumps({"text": "w " * (i + 1), "label": i % 2, "pair": i // 2}) + "\n" for i in range(20)))
    score_corpus(inp, tmp_path / "scored", show_progress=False, scorer=fixed_scorer_spec())
    upload_dir(s3_env, tmp_path / "scored", f"s3://{bucket}/scored")
    local = evaluate_dir(tmp_path / "scored")
    remote = evaluate_dir(f"s3://{bucket}/scored")
    assert remote["input_dir"] == f"s3://{bucket}/scored"
    assert {k: v for k, v in remote.items() if k != "input_dir"} == {k: v for k, v in local.items() if k != "input_dir"}


def test_train_writes_its_pair_to_a_bucket(s3_env, bucket, corpus, tmp_path):
    """train --output-dir s3://...: the same files as a local run (same seed, one thread), train_log.json last;
    the bucket's lock object is not part of the pair."""
    from scalingfilter.stages.train import TrainConfig, train_pair

    common = dict(input_dir=str(corpus), sizes="1x16x2,1x32x2", vocab_size=300, seq_len=16, batch_size=2, tokens=64,
                  threads=1, progress=False, checkpoint_every=2)
    local = train_pair(TrainConfig(output_dir=str(tmp_path / "local"), **common), log=lambda m: None)
    remote = train_pair(TrainConfig(output_dir=f"s3://{bucket}/pair", **common), log=lambda m: None)
    losses = lambda r: [(h["step"], h["small_loss"], h["large_loss"]) for h in r["history"]]  # noqa: E731
    assert losses(remote) == losses(local) and remote["output_dir"] == f"s3://{bucket}/pair"
    objects = bucket_files(s3_env, f"s3://{bucket}/pair")
    for rel in ("small/config.json", "large/config.json", "scoring.json", "train_log.json", "checkpoint.pt"):
        assert rel in objects, rel
    assert objects["scoring.json"] == (tmp_path / "local" / "scoring.json").read_bytes()
    assert not any(rel.startswith(".tmp-") or "/.tmp-" in rel for rel in objects)
    # another machine: no local working copy; --resume seeds it from the bucket (a finished run: nothing to redo)
    from scalingfilter.io.locations import spool_dir

    for d in spool_dir().glob("train-*"):
        shutil.rmtree(d)
    again = train_pair(TrainConfig(output_dir=f"s3://{bucket}/pair", resume=True, **common), log=lambda m: None)
    assert losses(again) == losses(local)
