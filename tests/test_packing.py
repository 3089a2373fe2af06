"""Padding-free packing and the fused output layer against independent computations.

Packed and padded batches must give the same scores (1e-5 relative, float32) for documents of 1 to
1,024 tokens, EOS tokens inside texts, BOS on and off and truncated documents; the fused chunked
loss must equal F.cross_entropy over full logits; every layout must cover exactly the n-1
predictions of each document and never let a token see another document.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scalingfilter.errors import UsageError
from scalingfilter.models.pair import load_pair
from scalingfilter.models.packing import (
    document_mask,
    pack_rows,
    packed_layout,
    padded_layout,
    plan_packed_batches,
    resolve_packing,
)
from scalingfilter.models.scoring import PairScorer, TokenizedDoc, layout_nll, token_nll

DATA = Path(__file__).resolve().parent / "data"
REL = 1e-5


@pytest.fixture(scope="module")
def long_pair_dir(tmp_path_factory, sample_texts):
    """A random GPT-2 pair with a 1,024-token context (tiny widths: fast)."""
    from scalingfilter.testing import build_random_pair

    return build_random_pair(tmp_path_factory.mktemp("pair1024"), sample_texts * 20, vocab_size=512, n_positions=1024)


@pytest.fixture(scope="module")
def long_pair(long_pair_dir):
    return load_pair(str(long_pair_dir), device="cpu", dtype="float32")


def random_docs(tokenizer, lengths, seed=0):
    """Random token documents of the given lengths, with EOS tokens sprinkled inside."""
    rng = random.Random(seed)
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    docs = []
    for n in lengths:
        ids = [rng.randrange(vocab) for _ in range(n)]
        for _ in range(max(1, n // 50)):
            ids[rng.randrange(n)] = eos
        docs.append(TokenizedDoc(ids, truncated=n == 1024))
    return docs


def assert_same_scores(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.n_tokens == y.n_tokens and x.truncated == y.truncated and x.error == y.error
        if x.error is None:
            assert y.small_loss == pytest.approx(x.small_loss, rel=REL)
            assert y.large_loss == pytest.approx(x.large_loss, rel=REL)
            assert y.fields()["quality_factor"] == pytest.approx(x.fields()["quality_factor"], rel=REL)


def test_packed_equals_padded_on_random_documents_1_to_1024_tokens(long_pair):
    rng = random.Random(3)
    lengths = [1, 2, 3, 5, 1024, 1024, 1023, 512, 511] + [rng.randint(1, 1024) for _ in range(12)] + [rng.randint(2, 40) for _ in range(20)]
    docs = random_docs(long_pair.tokenizer, lengths)
    # a budget of 2 rows of 1,024 tokens: several packed batches, rows holding many documents
    padded = PairScorer(long_pair, max_len=1024, max_tokens_per_batch=2048, packing="off").score_tokenized(docs)
    packed_scorer = PairScorer(long_pair, max_len=1024, max_tokens_per_batch=2048, packing="on")
    assert packed_scorer.packing
    packed = packed_scorer.score_tokenized(docs)
    assert_same_scores(padded, packed)
    assert padded[0].error and sum(s.error is None for s in padded) == len(lengths) - 1


@pytest.mark.parametrize("bos", [False, True])
def test_packed_equals_padded_on_texts_with_eos_and_truncation(long_pair, sample_texts, bos):
    rng = random.Random(4)
    words = " ".join(sample_texts).split()
    texts = list(sample_texts) + ["a", "", "x<|endoftext|>y<|endoftext|><|endoftext|>z"]
    texts += [" ".join(rng.choice(words) for _ in range(n)) for n in (2, 9, 80, 300, 2000)]
    kw = dict(max_len=200, max_tokens_per_batch=700, prepend_bos=bos)
    padded = PairScorer(long_pair, packing="off", **kw).score_texts(texts)
    packed = PairScorer(long_pair, packing="on", **kw).score_texts(texts)
    assert any(s.truncated for s in padded) and any(s.error for s in padded)
    assert_same_scores(padded, packed)


def jsonl_texts(path, n):
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line)["text"])
            if len(out) == n:
                return out
    return out


@pytest.mark.parametrize("corpus", ["generated", "dclm"])
def test_packed_equals_padded_with_the_bundled_pair(shared, corpus):
    """Real-length documents: generated multilingual web pages (tests/data, every clone) or DCLM's CommonCrawl
    pages (../shared/corpora/eval, developers and CI), many over the bundled pair's 512 tokens."""
    from scalingfilter.bundled import bundled_pair_dir
    from scalingfilter.models.pair import pair_scoring_defaults

    path = DATA / "pages.jsonl.gz" if corpus == "generated" else shared("corpora", "eval", "dclm-human-dev.jsonl.gz")
    if bundled_pair_dir() is None:
        pytest.skip("the bundled pair is not shipped in this installation")
    pair = load_pair("bundled", device="cpu", dtype="float32")
    settings = pair_scoring_defaults("bundled")  # max_len 512, prepend BOS
    texts = jsonl_texts(path, 12) + ["eos<|endoftext|>inside", "b"]
    padded = PairScorer(pair, packing="off", max_tokens_per_batch=4096, **settings).score_texts(texts)
    packed = PairScorer(pair, packing="on", max_tokens_per_batch=4096, **settings).score_texts(texts)
    assert any(s.truncated for s in padded)
    assert_same_scores(padded, packed)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_packing_other_families(tmp_path, tiny_pair_dir, family):
    """Rotary-position families take per-document position ids and the document mask too."""
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_pair_dir / "small")
    for role, width in (("small", 32), ("large", 64)):
        torch.manual_seed(1)
        if family == "llama":
            cfg = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
            model = LlamaForCausalLM(cfg)
        else:
            cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=256)
            model = GPTNeoXForCausalLM(cfg)
        model.save_pretrained(tmp_path / role)
        tok.save_pretrained(tmp_path / role)
    pair = load_pair(str(tmp_path), device="cpu", dtype="float32")
    docs = random_docs(pair.tokenizer, [1, 2, 7, 30, 64, 100, 180, 200, 3, 256], seed=5)
    padded = PairScorer(pair, max_len=256, max_tokens_per_batch=600, packing="off").score_tokenized(docs)
    packed = PairScorer(pair, max_len=256, max_tokens_per_batch=600, packing="on").score_tokenized(docs)
    assert_same_scores(padded, packed)


def test_fused_loss_equals_cross_entropy_over_full_logits():
    torch.manual_seed(0)
    n, d, vocab = 300, 48, 1000
    hidden = torch.randn(n, d)
    weight = torch.randn(vocab, d) / d**0.5
    targets = torch.randint(0, vocab, (n,))
    for bias in (None, torch.randn(vocab)):
        full = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")
        for chunk in (1, 7, 64, 300, 1000):  # chunks that do and do not divide n
            got = token_nll(hidden, weight, bias, targets, chunk)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, full, rtol=REL, atol=0)


def test_layout_nll_equals_full_model_cross_entropy(long_pair):
    """The hidden-state shortcut (output layer only at predicted positions) against the model's own
    logits at every position, one document at a time."""
    docs = random_docs(long_pair.tokenizer, [5, 40, 300], seed=6)
    seqs = [d.ids for d in docs]
    for layout in (padded_layout(seqs, [0, 1, 2], 0), packed_layout(seqs, [[2, 0], [1]], 0)):
        nll = layout_nll(long_pair.large, layout, chunk_elements=512 * 100)  # several chunks
        for j, ids in enumerate(seqs):
            t = torch.tensor([ids])
            with torch.no_grad():
                logits = long_pair.large(input_ids=t).logits[0, :-1]
            want = F.cross_entropy(logits, t[0, 1:], reduction="none")
            torch.testing.assert_close(nll[layout.doc_of == j], want, rtol=REL, atol=1e-6)


def test_layouts_cover_every_prediction_once_and_isolate_documents():
    rng = random.Random(7)
    seqs = [[rng.randrange(100) for _ in range(rng.randint(1, 60))] for _ in range(80)]
    lengths = [len(s) for s in seqs]
    batches = plan_packed_batches(lengths, 250)
    width = max(lengths)
    seen = sorted(d for rows in batches for row in rows for d in row)
    assert seen == list(range(len(seqs)))
    predictions = 0
    for rows in batches:
        assert len(rows) == 1 or len(rows) * width <= 250
        lay = packed_layout(seqs, rows, pad_id=0)
        assert lay.ids.shape[1] <= width
        flat = lay.ids.view(-1)
        # each prediction: the token at predict_at is followed by its target, in the same document
        assert torch.equal(flat[lay.predict_at + 1], lay.targets)
        seg = lay.segments.view(-1)
        assert torch.equal(seg[lay.predict_at], seg[lay.predict_at + 1])
        predictions += lay.predict_at.numel()
        # positions restart at 0 for each document
        for r, row in enumerate(rows):
            want = [p for d in row for p in range(lengths[d])]
            assert lay.positions[r, : len(want)].tolist() == want
        mask = document_mask(lay.segments, "sdpa", torch.float32)[:, 0]
        rows_n, w = lay.segments.shape
        for r in range(rows_n):
            s = lay.segments[r].tolist()
            want = torch.tensor([[s[q] == s[k] and k <= q for k in range(w)] for q in range(w)])
            assert torch.equal(mask[r], want)
        assert mask.any(dim=-1).all()  # no query row without a key (NaN in some kernels)
        additive = document_mask(lay.segments, "eager", torch.float32)[:, 0]
        assert torch.equal(additive == 0, mask)
    assert predictions == sum(n - 1 for n in lengths)


def test_pack_rows_best_fit():
    rng = random.Random(8)
    lengths = [rng.randint(1, 100) for _ in range(300)]
    rows = pack_rows(lengths, 100)
    assert sorted(i for r in rows for i in r) == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 100 for r in rows)
    # near-optimal: within a few rows of the volume bound
    assert len(rows) <= -(-sum(lengths) // 100) * 1.05 + 2
    with pytest.raises(ValueError):
        pack_rows([101], 100)


def test_packing_choice(long_pair, tiny_pair_dir):
    models = (long_pair.small, long_pair.large)
    assert resolve_packing("on", models, "cpu") is True
    assert resolve_packing("off", models, "cuda") is False
    assert resolve_packing("auto", models, "cpu") is False  # measured slower on CPU (BENCHMARKS.md)
    assert resolve_packing("auto", models, "cuda") is True
    with pytest.raises(UsageError, match="packing='sometimes'") as err:
        resolve_packing("sometimes", models, "cpu")
    assert err.value.cli_message().startswith("--packing='sometimes'")

    class Opaque:  # a family we have not checked
        class config:
            model_type = "opt"
            _attn_implementation = "sdpa"

    assert resolve_packing("auto", (Opaque(),), "cuda") is False
    with pytest.raises(UsageError, match="'opt'"):
        resolve_packing("on", (Opaque(),), "cpu")


def test_gpt2_conv1d_becomes_linear_with_the_same_function(long_pair_dir):
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    from scalingfilter.models.fast_gpt2 import conv1d_to_linear

    original = AutoModelForCausalLM.from_pretrained(long_pair_dir / "large").eval()
    converted = AutoModelForCausalLM.from_pretrained(long_pair_dir / "large").eval()
    assert conv1d_to_linear(converted) == 4 * converted.config.n_layer
    assert not any(isinstance(m, Conv1D) for m in converted.modules())
    ids = torch.randint(0, converted.config.vocab_size, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits, original(input_ids=ids).logits, rtol=REL, atol=1e-5)
    loaded = load_pair(str(long_pair_dir), device="cpu", dtype="float32")
    assert not any(isinstance(m, Conv1D) for m in loaded.large.modules())


def test_layout_moves_every_field_to_the_device():
    seqs = [[1, 2, 3], [4, 5], [6]]
    for layout in (padded_layout(seqs, [0, 1, 2], 0), packed_layout(seqs, [[0, 1], [2]], 0)):
        moved = layout.to("meta")
        for name in ("ids", "predict_at", "targets", "doc_of", "attention_mask", "positions", "segments"):
            before, after = getattr(layout, name), getattr(moved, name)
            assert (before is None) == (after is None)
            if after is not None:
                assert after.device.type == "meta" and after.shape == before.shape and after.dtype == before.dtype
        assert layout.to("cpu") is layout
