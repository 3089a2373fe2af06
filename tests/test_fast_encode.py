"""`fast_encode`: the embeddings equal sentence-transformers' `encode` on the whole texts, the cut before
tokenising keeps exactly the tokens the model would have kept, and the fast path really ran (texts were cut,
tokenising happened off the calling thread). Each runs on the pages generated in tests/data (every clone) and
on CLEANEVAL's real web pages in ../shared (developers and CI; see conftest.shared_path)."""

from __future__ import annotations

import gzip
import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from scalingfilter.models.fast_encode import CHARS_PER_TOKEN_BOUND, cut_at_word, encode_texts, length_sorted_order, supports

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def model():
    from scalingfilter.models.embedding import load_model

    return load_model(None, device="cpu", max_seq_length=64)


@pytest.fixture(scope="module", params=["generated", "cleaneval"])
def web_pages(request, shared):
    """`web_pages(n)`: the first n web pages (at most 40) of tests/data/pages.jsonl.gz (32 generated multilingual
    pages, every clone) or of CLEANEVAL's real ones (../shared/corpora/eval, developers and CI)."""
    path = DATA / "pages.jsonl.gz" if request.param == "generated" else shared("corpora", "eval", "cleaneval-pairs.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        pages = [json.loads(line)["text"] for _, line in zip(range(40), fh)]
    return lambda n: pages[:n]


def awkward_texts() -> list[str]:
    """Texts that test the cut: empty, blank, no whitespace at all, words longer than WordPiece keeps (one [UNK]
    per 600 characters, so a cut text falls short of the window), whitespace runs at the cut, non-breaking and
    ideographic spaces, CJK without spaces, a text just under and just over the bound."""
    bound = 64 * CHARS_PER_TOKEN_BOUND
    return ["", "   ", "x" * 9000, ("supercalifragilistic" * 30 + " ") * 20, "word " * 3000, "a\n\n\n  b " * 2000,
            "  leading blanks", "日本語のテキスト" * 800, ("ok\u00a0" * 400) + "end", ("é " * 2000),
            "y" * (bound - 1) + " tail", "z " * (bound // 2) + "w" * 50]


def test_embeddings_equal_sentence_transformers_encode(model, web_pages):
    texts = web_pages(20) + awkward_texts()
    random.Random(0).shuffle(texts)
    for batch_size in (1, 7, 64):
        expected = model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        got = encode_texts(model, texts, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_fast_path_ran_cut_texts_off_the_calling_thread(model, web_pages, monkeypatch):
    pages = web_pages(12)
    seen: list[tuple[int, str]] = []
    real = model.preprocess

    def recording(texts, *a, **k):
        seen.extend((len(t), threading.current_thread().name) for t in texts)
        return real(texts, *a, **k)

    monkeypatch.setattr(model, "preprocess", recording)
    encode_texts(model, pages, batch_size=4)
    bound = model.max_seq_length * CHARS_PER_TOKEN_BOUND
    assert max(len(p) for p in pages) > 4 * bound  # the pages are long enough for the cut to matter
    assert max(n for n, _ in seen) <= bound  # every page was tokenised cut, none whole
    assert {name.split("_")[0] for _, name in seen} == {"tokenise"}
    # a text whose cut falls short of the window is tokenised again whole
    seen.clear()
    long_words = ("supercalifragilistic" * 30 + " ") * 20
    encode_texts(model, [long_words], batch_size=1)
    assert [n for n, _ in seen] == [len(cut_at_word(long_words, bound)), len(long_words)]


def _prefix_property(tokenize, texts: list[str], limits: list[int]) -> int:
    """How many cut texts' tokens were checked to be a prefix of the whole text's tokens."""
    checked = 0
    for text in texts:
        whole = tokenize(text)
        for limit in limits:
            cut = cut_at_word(text, limit)
            if cut is text:
                continue
            part = tokenize(cut)
            assert whole[: len(part)] == part, (text[:80], limit)
            assert not cut[-1:].isspace() and len(cut) <= limit
            checked += 1
    return checked


def _random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["the", "Quality", "naïve", "café", "x=1;", "http://a.b/c?d=e", "日本", "—", "don't", "42.5", "\u00a0", "  ",
              "\n", "\n\n", "\t", " ", " ", " ", "ÉCOLE", "😀", "supercalifragilisticexpialidocious" * 4]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(20, 400))) for _ in range(n)]


def test_cut_tokens_are_a_prefix_wordpiece(model, web_pages):
    tok = model.tokenizer
    texts = _random_texts(1, 150) + web_pages(10)
    assert _prefix_property(lambda t: tok(t, add_special_tokens=False)["input_ids"], texts, [50, 300, 1000]) > 300


@pytest.mark.parametrize("bpe", ["trained-here", "gpt2"])
def test_cut_tokens_are_a_prefix_byte_level_bpe(tiny_pair_dir, shared, web_pages, bpe):
    from transformers import AutoTokenizer, GPT2TokenizerFast

    if bpe == "gpt2":  # GPT-2's own byte-level BPE (../shared/gpu)
        gpt2 = shared("gpu", "gpt2-tokenizer")
        tok = GPT2TokenizerFast(vocab_file=str(gpt2 / "vocab.json"), merges_file=str(gpt2 / "merges.txt"))
    else:  # a byte-level BPE trained here
        tok = AutoTokenizer.from_pretrained(Path(tiny_pair_dir) / "small")
    texts = _random_texts(2, 150) + web_pages(10)
    assert _prefix_property(lambda t: tok(t, add_special_tokens=False)["input_ids"], texts, [50, 300, 1000]) > 300


def test_cut_at_word_edges():
    assert cut_at_word("short", 10) == "short"
    assert cut_at_word("aaaa bbbb cccc", 11) == "aaaa bbbb"  # the word that crosses the bound goes
    assert cut_at_word("aaaa    bbbb", 6) == "aaaa"  # the whole whitespace run goes
    text = "n" * 50
    assert cut_at_word(text, 10) is text  # nowhere to cut: whole
    assert cut_at_word("   abc def", 4) == "   abc def"  # only leading blanks before the bound: whole


def test_order_and_fallback(model, monkeypatch):
    assert length_sorted_order(["a", "ccc", "bb", "ccc"]).tolist() == [1, 3, 2, 0]
    assert supports(model)
    monkeypatch.setattr(model[0], "can_flatten_inputs", True, raising=False)  # as with flash-attn installed
    assert not supports(model)
    monkeypatch.undo()
    assert encode_texts(model, [], batch_size=8).shape == (0, 384)

