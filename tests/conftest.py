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
