"""Shared fixtures: a tiny model pair built locally (no network), sample texts, the S3 server, and the one rule for
tests that read ../shared (`shared_path`, the `shared` fixture and the `needs_shared` marker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread, in this process and the ones it starts (set before torch is imported): a CLI run in this
# process (scalingfilter.testing.run_cli) then computes exactly as one in a subprocess, so runs of both kinds
# compare bit for bit, and pytest plus a child process do not oversubscribe a 2-core machine. (Before, the
# count depended on test order: a `train --threads 1` in this process set it for every test after it.)
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server for the session (one a test worker: each test takes a fresh bucket of its own, so tests
    share nothing on it, and the server's start-up is paid once); yields its endpoint URL."""
    pytest.importorskip("moto")
    from scalingfilter.testing import start_moto_server, stop_process

    proc, endpoint = start_moto_server()
    try:
        yield endpoint
    finally:
        stop_process(proc)


@pytest.fixture
def s3_env(s3, tmp_path, monkeypatch):
    """This process (and the CLI runs it starts) talk to the session's server; a spool directory of its own."""
    from scalingfilter.testing import S3_TEST_CREDENTIALS, forget_filesystems

    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in {**S3_TEST_CREDENTIALS, "AWS_ENDPOINT_URL": s3, "SCALINGFILTER_SPOOL_DIR": str(tmp_path / "spool")}.items():
        monkeypatch.setenv(k, v)
    forget_filesystems()
    yield s3
    forget_filesystems()


_bucket_no = [0]


@pytest.fixture
def bucket(s3):
    """A fresh bucket name on the session's server."""
    from scalingfilter.testing import s3fs_for

    _bucket_no[0] += 1
    name = f"bucket-{os.getpid()}-{_bucket_no[0]}"
    s3fs_for(s3).mkdir(name)
    return name


# ---------------------------------------------------------------------------------------------
# A local Ray instance


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the test worker's session, shared by the files that run work on Ray (its
    start-up is seconds of CPU, and up to half a minute on a loaded machine). Started from an environment
    without AWS_* and SCALINGFILTER_* settings, so its workers inherit no test's credentials, spool or fault
    settings: what a worker needs (storage options, fault points, the scorer) travels with the job, as on a real
    cluster whose workers share nothing with the driver's shell. Yields the `ray` module; the instance's address
    is `ray.get_runtime_context().gcs_address`."""
    ray = __import__("ray") if in_ci() else pytest.importorskip("ray")  # CI installs the dev extra: there, missing fails
    held = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("AWS_", "SCALINGFILTER_"))}
    try:
        # address="local": a new instance of our own, even where another Ray instance runs on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 << 20,
                 logging_level="WARNING", log_to_driver=False)
    finally:
        os.environ.update(held)
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# ../shared: real corpora, evals and tokenizers that developers and CI have beside the checkout and a user's
# clone does not. Every test that reads it goes through `shared_path` (or the `needs_shared` marker), so the
# rule is one: missing outside CI, the test is skipped with the path as its reason; missing in CI, it fails.
# What a clone can check without ../shared is checked on tests/data (written by tests/data/make_data.py).

SHARED = Path(__file__).resolve().parents[2] / "shared"


def in_ci() -> bool:
    """Whether this is a CI run: CI set and not empty, 0, false or no (CI services set CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def shared_path(*parts: str) -> Path:
    """`../shared/<parts>` (parts may hold "/"), for a test that reads it. Where it is missing the test is skipped,
    naming the path, except in CI, which must have ../shared: there the test fails, naming the path."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if in_ci():
            pytest.fail(f"{path} is missing: CI must have ../shared beside the checkout", pytrace=False)
        skip = pytest.skip.Exception(f"needs {path} (../shared is not beside this checkout; developers and CI have it)")
        skip._use_item_location = True  # report the test's location, not this line (as pytest does for a fixture's skip)
        raise skip
    return path


@pytest.fixture(scope="session")
def shared():
    """`shared_path`, for tests and fixtures that need a path under ../shared: `shared("corpora", "eval", "x.gz")`."""
    return shared_path


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_shared(*paths): the test reads these paths under ../shared; "
                                       "skipped where one is missing, failed in CI (see conftest.shared_path)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Apply `needs_shared` before any fixture is set up, so a skipped test costs nothing."""
    for mark in item.iter_markers("needs_shared"):
        for path in mark.args:
            shared_path(path)
