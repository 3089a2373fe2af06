"""The batched scorer against a straightforward one-document-at-a-time computation."""

from __future__ import annotations

import math
import random

import pytest
import torch

from scalingfilter.models.pair import ModelLoadError, load_pair
from scalingfilter.models.scoring import PairScorer, Tokenization, plan_batches, quality_factor


@pytest.fixture(scope="module")
def pair(tiny_pair_dir):
    return load_pair(str(tiny_pair_dir), device="cpu", dtype="float32")


def naive_loss(model, tokenizer, text, max_len, bos=False):
    """Mean NLL of one document through the plain Hugging Face path (full logits, its own loss)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if bos:
        ids = [tokenizer.bos_token_id] + ids
    ids = ids[:max_len]
    if len(ids) < 2:
        return None, len(ids)
    t = torch.tensor([ids])
    with torch.no_grad():
        return float(model(input_ids=t, labels=t).loss), len(ids) - 1


def mixed_texts(sample_texts):
    rng = random.Random(0)
    texts = list(sample_texts)
    for n in (1, 3, 17, 60, 150, 400):  # words: short to well past max_len
        texts.append(" ".join(rng.choice(sample_texts).split()[0] for _ in range(n)))
    texts.append("eos inside<|endoftext|>the text<|endoftext|> counts too")
    return texts


@pytest.mark.parametrize("bos", [False, True])
def test_batched_scores_match_one_at_a_time(pair, sample_texts, bos):
    texts = mixed_texts(sample_texts)
    max_len = 128
    # a small budget forces several batches with padding inside each
    scorer = PairScorer(pair, max_len=max_len, max_tokens_per_batch=300, prepend_bos=bos)
    scores = scorer.score_texts(texts)
    assert any(s.truncated for s in scores) and any(not s.truncated for s in scores)
    for text, s in zip(texts, scores):
        ls, n = naive_loss(pair.small, pair.tokenizer, text, max_len, bos)
        ll, _ = naive_loss(pair.large, pair.tokenizer, text, max_len, bos)
        if ls is None:  # a one-token document without BOS: nothing to predict
            assert s.error and s.small_loss is None and not bos
            continue
        assert s.error is None
        assert s.n_tokens == n
        assert s.small_loss == pytest.approx(ls, rel=1e-4)
        assert s.large_loss == pytest.approx(ll, rel=1e-4)
        f = s.fields()
        assert f["quality_factor"] == pytest.approx(math.exp(ls - ll), rel=1e-4)
        assert f["small_ppl"] == pytest.approx(math.exp(ls), rel=1e-4)


def test_eos_inside_text_is_scored(pair):
    eos = pair.tokenizer.eos_token_id
    tok = Tokenization(pair.tokenizer, max_len=64)
    [doc] = tok.encode(["a<|endoftext|>b<|endoftext|>c"])
    assert doc.ids.count(eos) == 2
    # the pad id is the EOS id here: masking by id would drop these positions
    scorer = PairScorer(pair, max_len=64)
    [s] = scorer.score_texts(["a<|endoftext|>b<|endoftext|>c"])
    assert s.n_tokens == len(doc.ids) - 1


def test_truncation_and_short_documents(pair):
    scorer = PairScorer(pair, max_len=16)
    long_text = "word " * 200
    empty, one, long = scorer.score_texts(["", "a", long_text])
    assert empty.error and "too short" in empty.error and empty.small_loss is None
    assert one.error and one.fields()["quality_factor"] is None
    assert long.truncated and long.n_tokens == 15
    for s in (empty, one, long):
        for v in s.fields().values():
            assert not (isinstance(v, float) and math.isnan(v))
    # with a BOS token, one real token is enough to score
    [one_bos] = PairScorer(pair, max_len=16, prepend_bos=True).score_texts(["a"])
    assert one_bos.error is None and one_bos.n_tokens == 1


def test_prefix_tokenisation_equals_full_encoding(pair):
    rng = random.Random(1)
    words = ["alpha", "beta", "  ", "\n\n", "ünïcödé", "日本語", "x" * 50, "12345", "!!!", "\t"]
    texts = [
        "".join(rng.choice(words) + rng.choice([" ", "", "\n"]) for _ in range(3000)),
        "a" * 20000,  # one giant pre-token across the cut
        " " * 20000 + "end",
        "word " * 10 + "z" * 30000,
        ("ab " * 1500) + ("q" * 9000),
    ]
    tok = Tokenization(pair.tokenizer, max_len=200, chars_per_token_cap=1)  # cap = 4096 chars
    backend = pair.tokenizer.backend_tokenizer
    for text, doc in zip(texts, tok.encode(texts)):
        full = backend.encode(text, add_special_tokens=False).ids
        assert doc.ids == full[:200]
        assert doc.truncated == (len(full) > 200)


def test_plan_batches_respects_budget_and_covers_all():
    rng = random.Random(2)
    lengths = [rng.randint(2, 300) for _ in range(500)]
    batches = plan_batches(lengths, 1000)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= 1000
        assert all(2 * lengths[i] >= longest for i in b)  # padding at most doubles a row's work
    # sorting keeps padding small: rows in a batch are close in length
    waste = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert waste < 0.1 * sum(lengths)


def test_one_long_text_does_not_pad_the_short_ones():
    """Few texts of unlike lengths (a library call): the long page goes alone, the short ones together."""
    lengths = [512] + [30 + i for i in range(30)]
    batches = plan_batches(lengths, 16384)
    assert len(batches) == 2 and batches[0] == [0] and sorted(batches[1]) == list(range(1, 31))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.3 * sum(lengths)  # one batch of all would compute 31 x 512 = 15,872 positions, 3.5 times more


def test_quality_factor_cannot_overflow():
    assert math.isfinite(quality_factor(5000.0, 0.0))
    assert quality_factor(3.0, 2.0) == pytest.approx(math.e)


def test_score_records_keeps_order_and_passes_rejects(pair, sample_texts):
    class R:
        def __init__(self, text):
            self.text = text

    records = [R(t) for t in sample_texts * 5] + [R(None)]
    scorer = PairScorer(pair, max_len=64, window_docs=7)
    out = list(scorer.score_records(records))
    assert [r for r, _ in out] == records
    assert out[-1][1] is None
    direct = scorer.score_texts([r.text for r in records[:-1]])
    for (_, s), d in zip(out, direct):
        assert s.small_loss == pytest.approx(d.small_loss, rel=1e-5)


def test_on_batch_is_called_once_per_batch(pair, sample_texts):
    """The Ray engine's sign of life during a long window: one call per batch of model work."""
    from scalingfilter.models.scoring import plan_batches

    scorer = PairScorer(pair, max_len=64, max_tokens_per_batch=128, packing="off")
    calls = []
    scorer.on_batch = lambda: calls.append(1)
    docs = scorer.tokenization.encode(sample_texts * 3)
    scorer.score_tokenized(docs)
    assert len(calls) == len(plan_batches([len(d.ids) for d in docs if len(d.ids) >= 2], 128)) > 1


def test_mismatched_tokenizers_are_refused(tmp_path, tiny_pair_dir, sample_texts):
    from scalingfilter.testing import build_random_pair

    other = build_random_pair(tmp_path / "other", sample_texts * 5, vocab_size=300, n_positions=64)
    with pytest.raises(ModelLoadError, match="do not share one tokenizer"):
        load_pair(str(tiny_pair_dir), large_model=str(other / "large"), device="cpu")


def test_unreachable_hub_model_error_names_model_and_fix():
    with pytest.raises(ModelLoadError) as err:
        load_pair(small_model="no-such-org/no-such-model-xyz", large_model="no-such-org/no-such-model-xyz", device="cpu")
    msg = str(err.value)
    # the library names its parameter (small=DIR); the CLI, the flag (--small-model=DIR)
    assert "no-such-org/no-such-model-xyz" in msg and "small=DIR" in msg and "local" in msg
    assert "--small-model=DIR" in err.value.cli_message()


def test_max_len_beyond_context_is_refused(pair):
    from scalingfilter.errors import UsageError

    with pytest.raises(UsageError, match="max_len=4096 exceeds"):
        PairScorer(pair, max_len=4096)


@pytest.mark.parametrize("content, message", [('{"max_len": "512", "prepend_bos": true}', "max_len must be an integer"),
                                              ('{"max_len": 1}', "max_len must be an integer"),
                                              ('{"max_len": true}', "max_len must be an integer"),
                                              ('{"prepend_bos": "yes"}', "prepend_bos must be true or false"),
                                              ('[512, true]', "expected a JSON object")])
def test_a_pairs_scoring_json_with_wrong_types_is_one_line(tmp_path, tiny_pair_dir, content, message):
    import shutil

    from scalingfilter.models.pair import pair_scoring_defaults

    pair = tmp_path / "pair"
    shutil.copytree(tiny_pair_dir, pair)
    (pair / "scoring.json").write_text(content)
    with pytest.raises(ModelLoadError, match=message) as err:
        pair_scoring_defaults(str(pair))
    assert "\n" not in str(err.value)
