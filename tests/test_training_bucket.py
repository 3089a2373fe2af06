"""`train --output-dir s3://...` publishes every checkpoint as it is written (training.CheckpointPublisher), so
that a run whose machine is lost resumes on another machine (an empty spool directory) from the last published
checkpoint and reaches the weights of an uninterrupted run. Against a real S3 API server (moto's `moto_server`,
as tests/test_storage.py), with a tiny pair and 8 steps so that each run takes a second or two."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from scalingfilter.io import locations  # noqa: E402
from scalingfilter.io.writers import write_records  # noqa: E402
from scalingfilter.errors import InputError, StorageError  # noqa: E402
from scalingfilter.testing import bucket_files  # noqa: E402
from scalingfilter.stages.train import TrainConfig, train_pair  # noqa: E402
from scalingfilter.faults import KILL_AFTER_CHECKPOINTS_ENV  # noqa: E402
from scalingfilter.stages.train.publish import PUBLISH_FAILURES_TO_STOP  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# 8 steps of 2 x 16 tokens, a checkpoint every 2 steps: checkpoints at steps 2, 4, 6 and 8 (the final one)
SETTINGS = dict(sizes="1x16x2,1x32x2", vocab_size=300, seq_len=16, batch_size=2, tokens=2 * 16 * 8, lr=3e-3,
                checkpoint_every=2, threads=1, precision="fp32", progress=False)
CLI_SETTINGS = ["--sizes", "1x16x2,1x32x2", "--vocab-size", "300", "--seq-len", "16", "--batch-size", "2", "--tokens", "256",
                "--lr", "3e-3", "--checkpoint-every", "2", "--threads", "1", "--precision", "fp32", "--no-progress"]


# the fixtures s3, s3_env and bucket (a moto server, this process talking to it, a fresh bucket) are in conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    write_records(d / "a.jsonl", [{"id": i, "text": " ".join(rng.choice(sample_texts, 3))} for i in range(80)])
    return d


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """The same run on a local directory, never interrupted: the weights every bucket run must reach."""
    out = tmp_path_factory.mktemp("uninterrupted") / "pair"
    train_pair(TrainConfig(input_dir=str(corpus), output_dir=str(out), **SETTINGS), log=lambda m: None)
    return out


def assert_same_weights(local_pair: Path, objects: dict[str, bytes]) -> None:
    """The pair in the bucket has the local pair's weights, to the tolerance of tests/test_training.py's resume test."""
    from safetensors.torch import load, load_file

    for name in ("small", "large"):
        a, b = load_file(str(local_pair / name / "model.safetensors")), load(objects[f"{name}/model.safetensors"])
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}.{k}")


def lose_the_machine() -> None:
    """What another machine has: no local working copy."""
    spool = locations.spool_dir()
    assert list(spool.glob("train-*"))
    shutil.rmtree(spool)


def test_a_lost_machine_resumes_from_the_last_published_checkpoint(s3_env, bucket, corpus, uninterrupted, tmp_path):
    url = f"s3://{bucket}/pair"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               **{KILL_AFTER_CHECKPOINTS_ENV: "1"})
    killed = subprocess.run([sys.executable, "-m", "scalingfilter.cli", "train", "--input-dir", str(corpus), "--output-dir", url,
                             *CLI_SETTINGS], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # the bucket after the crash: the first checkpoint and the cache it needs, not the pair, not train_log.json
    objects = bucket_files(s3_env, url)
    assert "checkpoint.pt" in objects and "train_log.json" not in objects, sorted(objects)
    assert {".cache/data.json", ".cache/train.npy", ".cache/heldout.npy", ".cache/tokenizer/tokenizer.json"} <= objects.keys()
    assert not any(rel.startswith(("small/", "large/")) or rel == "scoring.json" for rel in objects)
    assert torch.load(io.BytesIO(objects["checkpoint.pt"]), weights_only=True)["step"] == 2

    lose_the_machine()
    messages: list[str] = []
    res = train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, resume=True, **SETTINGS), log=messages.append)
    assert "resumed at step 2 of 8" in messages, messages
    assert any("reusing the tokenizer" in m for m in messages)  # the published cache, not a new tokenizer
    assert res["checkpoints_published"] == 4 - 1  # steps 4, 6 and 8
    objects = bucket_files(s3_env, url)
    assert "train_log.json" in objects and torch.load(io.BytesIO(objects["checkpoint.pt"]), weights_only=True)["step"] == 8
    assert_same_weights(uninterrupted, objects)
    assert objects["scoring.json"] == (uninterrupted / "scoring.json").read_bytes()


def test_a_machine_that_comes_back_continues_from_the_bucket_not_its_older_copy(s3_env, bucket, corpus, uninterrupted, tmp_path):
    """Machine A publishes step 2 and is lost; machine B resumes from the bucket and publishes steps 4 and 6; A comes
    back with its step-2 working copy: it continues from the bucket's step 6 (checkpoint.json says which step each
    copy holds), instead of overwriting the bucket's later checkpoint with a rerun of B's work."""
    url = f"s3://{bucket}/pair"
    cmd = [sys.executable, "-m", "scalingfilter.cli", "train", "--input-dir", str(corpus), "--output-dir", url, *CLI_SETTINGS]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    a = subprocess.run(cmd, cwd=REPO, env={**env, KILL_AFTER_CHECKPOINTS_ENV: "1"}, capture_output=True, text=True, timeout=300)
    assert a.returncode == -signal.SIGKILL, a.stderr
    b = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**env, KILL_AFTER_CHECKPOINTS_ENV: "2", "SCALINGFILTER_SPOOL_DIR": str(tmp_path / "machine-b")})
    assert b.returncode == -signal.SIGKILL and "resumed at step 2 of 8" in b.stdout + b.stderr, b.stderr
    objects = bucket_files(s3_env, url)
    assert torch.load(io.BytesIO(objects["checkpoint.pt"]), weights_only=True)["step"] == 6
    assert json.loads(objects["checkpoint.json"]) == {"step": 6}
    messages: list[str] = []  # machine A again: its spool still holds step 2
    train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, resume=True, **SETTINGS), log=messages.append)
    assert any("later than this working copy's step 2" in m for m in messages), messages
    assert "resumed at step 6 of 8" in messages
    assert_same_weights(uninterrupted, bucket_files(s3_env, url))


def recording_puts(monkeypatch, fail) -> list[tuple[str, bool]]:
    """Every whole-object PUT of the run, in order, as (key, succeeded); `fail(key, attempt)` says which fail
    (as the store fails after its retries: a StorageError)."""
    from scalingfilter.io.objects import ObjectPath

    real = ObjectPath.put_from
    puts: list[tuple[str, bool]] = []

    def put_from(self, local):
        key = self.path.split("/pair/", 1)[1]
        attempt = sum(k == key for k, _ in puts) + 1
        if fail(key, attempt):
            puts.append((key, False))
            raise StorageError(f"cannot write {self}: simulated outage")
        real(self, local)
        puts.append((key, True))

    monkeypatch.setattr(ObjectPath, "put_from", put_from)
    return puts


def test_the_cache_goes_before_the_checkpoint_and_a_failed_publication_is_retried(s3_env, bucket, corpus, uninterrupted,
                                                                                  monkeypatch):
    """The order that makes every prefix of the uploads resumable; one failed publication: a warning, and the next
    checkpoint reaches the bucket."""
    url = f"s3://{bucket}/pair"
    puts = recording_puts(monkeypatch, lambda key, attempt: key == "checkpoint.pt" and attempt == 2)
    messages: list[str] = []
    res = train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, **SETTINGS), log=messages.append)
    keys = [k for k, _ in puts]
    cache = [k for k in keys if k.startswith(".cache/")]
    assert len(cache) == len(set(cache)) and cache[-1] == ".cache/data.json"  # each once, data.json last
    assert keys[: len(cache)] == cache and keys[len(cache)] == "checkpoint.pt"  # the cache before the first checkpoint
    assert [ok for k, ok in puts if k == "checkpoint.pt"] == [True, False, True, True]  # steps 2, 4 (failed), 6, 8
    assert keys[-1] == "train_log.json" and keys.count("train_log.json") == 1
    warnings = [m for m in messages if m.startswith("warning:")]
    assert len(warnings) == 1 and "step 4" in warnings[0] and "holds the checkpoint of step 2" in warnings[0]
    assert res["checkpoints_published"] == 3
    assert_same_weights(uninterrupted, bucket_files(s3_env, url))
    # a fresh run would publish its checkpoints beside this pair: refused without --resume
    with pytest.raises(InputError, match=f"output_dir='{url}' already holds a training run; pass resume=True") as err:
        train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, **SETTINGS), log=lambda m: None)
    assert err.value.cli_message().startswith(f"--output-dir='{url}' already") and "pass --resume" in err.value.cli_message()


def test_a_store_that_keeps_failing_stops_the_run_and_it_resumes_here(s3_env, bucket, corpus, uninterrupted, monkeypatch):
    url = f"s3://{bucket}/pair"
    outage = [True]
    recording_puts(monkeypatch, lambda key, attempt: outage[0] and key == "checkpoint.pt")
    with pytest.raises(StorageError, match=f"{PUBLISH_FAILURES_TO_STOP} checkpoints in a row") as err:
        train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, **SETTINGS), log=lambda m: None)
    assert "\n" not in str(err.value) and "step 6" in str(err.value) and "resume=True" in str(err.value)
    assert "--resume" in err.value.cli_message()
    objects = bucket_files(s3_env, url)
    assert ".cache/data.json" in objects and "checkpoint.pt" not in objects and "train_log.json" not in objects
    outage[0] = False  # the store is back
    # a fresh run (no --resume) to the prefix, which holds no run: the working copy holds one the bucket never
    # received, so it is kept, and the refusal says where it is and both ways out (issue 20, 19)
    local = next(locations.spool_dir().glob("train-*"))
    with pytest.raises(InputError) as refused:
        train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, **SETTINGS), log=lambda m: None)
    msg = str(refused.value)
    assert "\n" not in msg and str(local) in msg and "step 6" in msg and "resume=True" in msg and f"delete {local}" in msg, msg
    assert "with --resume" in refused.value.cli_message()
    assert (local / "checkpoint.pt").exists()
    messages: list[str] = []
    train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, resume=True, **SETTINGS), log=messages.append)
    assert "resumed at step 6 of 8" in messages  # the local working copy's checkpoint: nothing lost
    assert_same_weights(uninterrupted, bucket_files(s3_env, url))


def test_a_fresh_run_to_an_emptied_prefix_replaces_the_stale_working_copy(s3_env, bucket, corpus, uninterrupted):
    """Issue 20, 19: the prefix received the whole run and was emptied since; this machine's working copy for it is
    stale (the bucket had all of it): a fresh run removes it and starts afresh, instead of refusing."""
    url = f"s3://{bucket}/pair"
    train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, **SETTINGS), log=lambda m: None)
    remote = locations.location(url)
    for rel in remote.find():
        (remote / rel).unlink()
    assert not bucket_files(s3_env, url)
    local = next(locations.spool_dir().glob("train-*"))
    assert (local / "train_log.json").exists()
    messages: list[str] = []
    res = train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, **SETTINGS), log=messages.append)
    assert any("stale working copy" in m and str(local) in m for m in messages), messages
    assert res["steps"] == 8 and not any(m.startswith("resumed") for m in messages)
    assert_same_weights(uninterrupted, bucket_files(s3_env, url))

    # the same after a run killed right after a checkpoint the bucket received (step 2), then emptied
    for rel in remote.find():
        (remote / rel).unlink()
    shutil.rmtree(local)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               **{KILL_AFTER_CHECKPOINTS_ENV: "1"})
    killed = subprocess.run([sys.executable, "-m", "scalingfilter.cli", "train", "--input-dir", str(corpus), "--output-dir", url,
                             *CLI_SETTINGS], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for rel in remote.find():
        (remote / rel).unlink()
    messages = []
    train_pair(TrainConfig(input_dir=str(corpus), output_dir=url, **SETTINGS), log=messages.append)
    assert any("stale working copy" in m for m in messages), messages
    assert_same_weights(uninterrupted, bucket_files(s3_env, url))
