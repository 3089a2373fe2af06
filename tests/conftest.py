"""Shared fixtures: a tiny model pair built locally (no network) and sample texts."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Home | About | Contact | Login | Register | Home | About | Contact",
    "def add(a, b):\n    return a + b\n",
    "Copyright (C) 2024. All rights reserved. Terms of use. Privacy policy.",
    "A language model assigns probabilities to sequences of words; larger models assign higher ones to good text.",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "Über die Brücke gingen zwölf Männer — naïve café façade. 日本語のテキスト。",
]


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    return list(SAMPLE_TEXTS)


@pytest.fixture(scope="session")
def tiny_pair_dir(tmp_path_factory):
    """A directory with `small/` and `large/`: random GPT-2 models sharing a BPE tokenizer (vocab 512)."""
    from scalingfilter.testing import build_random_pair

    out = tmp_path_factory.mktemp("tiny_pair")
    return build_random_pair(out, SAMPLE_TEXTS * 20, vocab_size=512, n_positions=256)


# ---------------------------------------------------------------------------------------------
# A real S3 API server (moto's standalone moto_server) for the object-storage tests


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server for the module; yields its endpoint URL."""
    pytest.importorskip("moto")
    from scalingfilter.testing import start_moto_server, stop_process

    proc, endpoint = start_moto_server()
    try:
        yield endpoint
    finally:
        stop_process(proc)


def _fresh_filesystems() -> None:
    """Forget cached filesystem instances: they hold the endpoint and credentials they were made with."""
    import s3fs

    from scalingfilter import locations

    locations._filesystem.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_env(s3, tmp_path, monkeypatch):
    """This process (and the CLI runs it starts) talk to the module's server; a spool directory of its own."""
    from scalingfilter.testing import S3_TEST_CREDENTIALS

    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in {**S3_TEST_CREDENTIALS, "AWS_ENDPOINT_URL": s3, "SCALINGFILTER_SPOOL_DIR": str(tmp_path / "spool")}.items():
        monkeypatch.setenv(k, v)
    _fresh_filesystems()
    yield s3
    _fresh_filesystems()


_bucket_no = [0]


@pytest.fixture
def bucket(s3):
    """A fresh bucket name on the module's server."""
    from scalingfilter.testing import s3fs_for

    _bucket_no[0] += 1
    name = f"bucket-{os.getpid()}-{_bucket_no[0]}"
    s3fs_for(s3).mkdir(name)
    return name
