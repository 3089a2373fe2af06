"""`ablate`'s evaluation (stages/ablate/evals.py) against an independent computation.

The reference is deliberately naive: the Hugging Face model loaded on its own (not through LanguageModel),
one sequence at a time, no padding, `torch.log_softmax` of its logits, the target tokens' log-probabilities
summed in a Python loop, token ids from the tokenizer's own `__call__`. Hand-written items run on a fresh
clone; real BLiMP / ARC-Easy / LAMBADA items come from ../shared/evals (`shared_path`)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from scalingfilter.errors import InputError  # noqa: E402
from scalingfilter.stages.ablate import evals  # noqa: E402
from scalingfilter.stages.ablate.evals import LanguageModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "scalingfilter" / "bundled" / "pair" / "small"

MINIMAL_PAIRS = [
    {"sentence_good": "The cats are sleeping on the mat.", "sentence_bad": "The cats is sleeping on the mat.",
     "UID": "agreement", "field": "morphology"},
    {"sentence_good": "Who did you see?", "sentence_bad": "Who did you see him?", "UID": "island", "field": "syntax"},
    {"sentence_good": "She has eaten the apple.", "sentence_bad": "She has ate the apple.", "UID": "agreement",
     "field": "morphology"},
    {"sentence_good": "No student ever left.", "sentence_bad": "Some student ever left.", "UID": "npi",
     "field": "syntax/semantics"},
]
CHOICES = [
    {"query": "Question: What do plants need to make food?", "choices": ["sunlight", "sand", "noise", "plastic bags"], "gold": 0},
    {"query": "Question: Which is a liquid at room temperature?", "choices": ["iron", "water", "a rock"], "gold": 1},
]
LAMBADA = [
    {"context": "He opened the door and called to his dog. The", "continuation": "dog"},
    {"context": "It was the best of times, it was the worst of", "continuation": "times"},
    {"context": "\"Where are you going?\" she asked.\n\n\"To the", "continuation": "market"},
]


@pytest.fixture(scope="module")
def hf():
    """The bundled small model and its tokenizer, loaded directly with transformers (the reference)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(SMALL).eval()
    tok = transformers.AutoTokenizer.from_pretrained(SMALL)
    return model, tok


@pytest.fixture(scope="module")
def lm():
    return LanguageModel.from_pretrained(str(SMALL), device="cpu")


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def by_hand(model, tok, context_ids, target_ids):
    """(sum of natural-log probabilities, every target token the argmax) of `target_ids` after
    `[BOS] + context_ids`: one unpadded forward pass, summed in a loop."""
    seq = [tok.bos_token_id] + list(context_ids) + list(target_ids)
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0]
    logp = torch.log_softmax(logits, dim=-1)
    total, greedy = 0.0, True
    for j, t in enumerate(target_ids):
        pos = 1 + len(context_ids) + j - 1  # the position whose output predicts target token j
        total += float(logp[pos, t])
        greedy = greedy and int(torch.argmax(logits[pos])) == t
    return total, greedy


def hand_minimal_pairs(model, tok, items):
    return [float(by_hand(model, tok, [], ids(tok, it["sentence_good"]))[0]
                  > by_hand(model, tok, [], ids(tok, it["sentence_bad"]))[0]) for it in items]


def hand_choice(model, tok, item, delimiter="\nAnswer: "):
    """(raw right, normalised right): context `query + delimiter` without its trailing space, each option scored
    as the tokens of `" " + choice` (the boundary rule the module documents)."""
    head = (item["query"] + delimiter).rstrip()
    moved = (item["query"] + delimiter)[len(head):]
    sums = [by_hand(model, tok, ids(tok, head), ids(tok, moved + c))[0] for c in item["choices"]]
    norm = [s / len(delimiter + c) for s, c in zip(sums, item["choices"])]
    return float(int(np.argmax(sums)) == item["gold"]), float(int(np.argmax(norm)) == item["gold"])


def hand_lambada(model, tok, item):
    s, greedy = by_hand(model, tok, ids(tok, item["context"]), ids(tok, " " + item["continuation"]))
    return float(greedy), -s / math.log(2), len((" " + item["continuation"]).encode("utf-8"))


def check_against_hand(lm, hf, blimp, choices, lambada):
    model, tok = hf
    got = evals.score_minimal_pairs(lm, blimp)
    want = hand_minimal_pairs(model, tok, blimp)
    assert got["blimp_accuracy"].num.tolist() == want
    uids = sorted({it["UID"] for it in blimp})
    per_uid = [np.mean([w for w, it in zip(want, blimp) if it["UID"] == u]) for u in uids]
    assert got["blimp_accuracy"].value() == pytest.approx(np.mean(per_uid))

    got = evals.score_multiple_choice(lm, choices)
    want = [hand_choice(model, tok, it) for it in choices]
    assert got["arc_easy_accuracy"].num.tolist() == [w[0] for w in want]
    assert got["arc_easy_accuracy_norm"].num.tolist() == [w[1] for w in want]

    got = evals.score_lambada(lm, lambada)
    want = [hand_lambada(model, tok, it) for it in lambada]
    assert got["lambada_accuracy"].num.tolist() == [w[0] for w in want]
    assert got["lambada_bpb"].num == pytest.approx([w[1] for w in want], abs=1e-4)
    assert got["lambada_bpb"].den.tolist() == [w[2] for w in want]
    assert got["lambada_bpb"].value() == pytest.approx(sum(w[1] for w in want) / sum(w[2] for w in want), abs=1e-5)


def test_scorers_equal_by_hand_on_hand_written_items(lm, hf):
    check_against_hand(lm, hf, MINIMAL_PAIRS, CHOICES, LAMBADA)
    fields = evals.score_minimal_pairs(lm, MINIMAL_PAIRS)
    # `syntax/semantics` is BLiMP's other spelling of syntax_semantics: one metric name
    assert sorted(fields) == ["blimp_accuracy", "blimp_accuracy_morphology", "blimp_accuracy_syntax",
                              "blimp_accuracy_syntax_semantics"]
    assert len(fields["blimp_accuracy_morphology"]) == 2 and fields["blimp_accuracy_morphology"].group_names == ["agreement"]


def test_scorers_equal_by_hand_on_real_items(lm, hf, shared):
    d = shared("evals")
    sets = evals.load_eval_sets(str(d), max_items={"blimp": 12, "arc_easy": 4, "lambada": 4}, seed=1)
    check_against_hand(lm, hf, sets["blimp"], sets["arc_easy"], sets["lambada"])
    # the boundary rule cuts the whole text's tokenization: no token straddles query and answer
    tok = hf[1]
    for it in sets["arc_easy"]:
        for c in it["choices"]:
            assert ids(tok, it["query"] + "\nAnswer:") + ids(tok, " " + c) == ids(tok, it["query"] + "\nAnswer: " + c)
    for it in sets["lambada"]:
        assert ids(tok, it["context"]) + ids(tok, " " + it["continuation"]) == ids(tok, it["context"] + " " + it["continuation"])


def test_score_is_the_same_batched_padded_packed_and_alone(hf):
    """Right padding, packing and one-request batches give the one-at-a-time numbers (to float32 rounding)."""
    model, tok = hf
    texts = [it["sentence_good"] for it in MINIMAL_PAIRS] + [it["context"] for it in LAMBADA]
    contexts = [ids(tok, t) for t in texts]
    targets = [ids(tok, " and then it was over.")] * len(texts)
    want = [by_hand(model, tok, c, t) for c, t in zip(contexts, targets)]
    for kw in ({}, {"max_tokens_per_batch": 1}, {"packing": "on"}, {"packing": "on", "max_tokens_per_batch": 40}):
        got = LanguageModel(model, tok, **kw).score(contexts, targets)
        assert got.logprob == pytest.approx([w[0] for w in want], abs=1e-5), kw
        assert got.greedy.tolist() == [w[1] for w in want]
        assert got.n_tokens.tolist() == [len(t) for t in targets]


def test_too_long_context_is_cut_from_the_left(hf):
    model, tok = hf
    lm = LanguageModel(model, tok, max_len=12)
    context = ids(tok, "one two three four five six seven eight nine ten eleven twelve thirteen")
    target = ids(tok, " fourteen")
    got = lm.score([context, context[:3]], [target, target])
    keep = 12 - 1 - len(target)
    assert len(context) > keep
    assert got.truncated.tolist() == [True, False]
    assert got.logprob[0] == pytest.approx(by_hand(model, tok, context[-keep:], target)[0], abs=1e-5)
    assert got.logprob[1] == pytest.approx(by_hand(model, tok, context[:3], target)[0], abs=1e-5)
    with pytest.raises(InputError, match="does not fit"):
        lm.score([[]], [list(range(20))])


def test_heldout_bpb_windows_and_sources(hf):
    """A document longer than the context is scored in windows, each conditioned on the tokens before it;
    bits per byte is summed within a source and macro-averaged over sources."""
    model, tok = hf
    lm = LanguageModel(model, tok, max_len=16)
    long_text = "The river ran past the old mill and under the stone bridge, where children fished. " * 2
    docs = [(long_text, "books"), ("A short note.", "books"), ("Buy now! Best price!", "web"), ("", "web")]
    toks = ids(tok, long_text)
    assert len(toks) > 31  # four windows
    bits = []
    for text, _ in docs[:3]:
        t = ids(tok, text)
        total = 0.0
        for c0, t0, t1 in evals.heldout_windows(len(t), 16):
            total += by_hand(model, tok, t[c0:t0], t[t0:t1])[0]
        bits.append(-total / math.log(2))
    got = evals.heldout_bpb(lm, docs)["heldout_bpb"]
    assert len(got) == 3  # the empty text is left out
    assert got.num == pytest.approx(bits, abs=1e-4)
    nbytes = [len(t.encode()) for t, _ in docs[:3]]
    want = ((bits[0] + bits[1]) / (nbytes[0] + nbytes[1]) + bits[2] / nbytes[2]) / 2
    assert got.value() == pytest.approx(want, abs=1e-6)
    # the first window scores max_len - 1 tokens from the BOS alone; later ones condition on 7 tokens (16 - 1 - 8)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[tok.bos_token_id] + toks[:15]])).logits[0], -1)
    first = sum(float(logp[j, toks[j]]) for j in range(15))
    second = by_hand(model, tok, toks[8:15], toks[15:23])[0]
    assert evals.heldout_windows(len(toks), 16)[:2] == [(0, 0, 15), (8, 15, 23)]
    assert lm.score([[], toks[:15]], [toks[:15], toks[15:23]]).logprob == pytest.approx([first, second], abs=1e-5)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100])
def test_heldout_windows_score_every_token_once(n):
    windows = evals.heldout_windows(n, 16)
    covered = [i for _, t0, t1 in windows for i in range(t0, t1)]
    assert covered == list(range(n))
    assert all(t1 - c0 <= 15 for c0, _, t1 in windows)  # with the BOS, every window fits the context


def test_bundled_blimp_subset():
    sets = evals.load_eval_sets(None)
    assert list(sets) == ["blimp"]
    items = sets["blimp"]
    uids = {}
    for it in items:
        uids[it["UID"]] = uids.get(it["UID"], 0) + 1
    assert len(uids) == 67 and set(uids.values()) == {20}
    assert evals.BUNDLED_BLIMP.stat().st_size < 100_000
    readme = (evals.BUNDLED_BLIMP.parent / "README.md").read_text()
    assert "alexwarstadt/blimp" in readme and "CC BY" in readme


def test_bundled_blimp_subset_rebuilds_from_the_full_set(shared):
    source = shared("evals", "blimp.jsonl.gz")
    spec = importlib.util.spec_from_file_location("make_blimp_subset", ROOT / "scripts" / "make_blimp_subset.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with gzip.open(source, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert script.sample_pairs(records, 20, 0) == evals.load_eval_sets(None)["blimp"]


def write(path: Path, lines: list) -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name,line,why", [
    ("arc_easy.jsonl", {"query": "Q", "choices": ["a", "b"], "gold": 2}, "'gold'"),
    ("arc_easy.jsonl.gz", {"query": "Q", "choices": "ab", "gold": 0}, "'choices'"),
    ("lambada_openai.jsonl", {"context": "The"}, "'continuation'"),
    ("blimp.jsonl", {"sentence_good": "A.", "UID": "x", "field": "syntax"}, "'sentence_bad'"),
    ("blimp.jsonl", '{"sentence_good": "A.",', "not valid JSON"),
    ("lambada_openai.jsonl", "[1, 2]", "not a JSON object"),
])
def test_bad_eval_line_is_one_line_input_error(tmp_path, name, line, why):
    good = {"arc_easy": CHOICES[0], "lambada_openai": LAMBADA[0], "blimp": MINIMAL_PAIRS[0]}[name.split(".")[0]]
    path = write(tmp_path / name, [good, line])
    with pytest.raises(InputError) as e:
        evals.load_eval_sets(str(tmp_path))
    message = str(e.value)
    assert "\n" not in message and f"{path}:2:" in message and why in message


def test_eval_dir_errors_and_plain_jsonl(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        evals.load_eval_sets(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="holds none of"):
        evals.load_eval_sets(str(tmp_path))
    (tmp_path / "lambada_openai.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="cannot read it"):
        evals.load_eval_sets(str(tmp_path))
    (tmp_path / "lambada_openai.jsonl.gz").unlink()
    write(tmp_path / "lambada_openai.jsonl", LAMBADA)
    sets = evals.load_eval_sets(str(tmp_path))
    assert sets["lambada"] == LAMBADA and len(sets["blimp"]) == 1340  # no BLiMP file: the bundled subset


def test_subsample_is_deterministic_stratified_and_in_file_order():
    full = evals.load_eval_sets(None)["blimp"]
    a = evals.load_eval_sets(None, max_items=134, seed=3)["blimp"]
    assert a == evals.load_eval_sets(None, max_items={"blimp": 134}, seed=3)["blimp"]
    assert a != evals.load_eval_sets(None, max_items=134, seed=4)["blimp"]
    counts = {}
    for it in a:
        counts[it["UID"]] = counts.get(it["UID"], 0) + 1
    assert len(a) == 134 and set(counts.values()) == {2}
    position = {it["id"]: i for i, it in enumerate(full)}
    assert [position[it["id"]] for it in a] == sorted(position[it["id"]] for it in a)
    b = evals.subsample(list(range(100)), 10, seed=0)
    assert b == evals.subsample(list(range(100)), 10, seed=0) and b == sorted(b) and len(set(b)) == 10
    assert evals.subsample(list(range(5)), 10, seed=0) == list(range(5))


def test_evaluate_model_names_every_metric(lm):
    sets = {"blimp": MINIMAL_PAIRS, "arc_easy": CHOICES, "lambada": LAMBADA}
    out = evals.evaluate_model(lm, sets, [("Some held-out text.", "a"), ("More of it.", "b")])
    for name in ("blimp_accuracy", "arc_easy_accuracy", "arc_easy_accuracy_norm", "lambada_accuracy", "lambada_bpb", "heldout_bpb"):
        assert name in out
    from scalingfilter.stages.ablate.items import higher_is_better

    assert sorted(m for m in out if not higher_is_better(m)) == ["heldout_bpb", "lambada_bpb"]
    assert out["heldout_bpb"].group_names == ["a", "b"] and 0 < out["heldout_bpb"].value() < 20
    assert not any(m.endswith('_bpb') for m in evals.CHANCE)  # a chance level only where guessing has a score
    assert evals.evaluate_model(lm, {"blimp": []}) == {}


@pytest.fixture(scope="module")
def random_model(hf):
    """An untrained model of the `gpt` module's construction, 16 positions, sharing the bundled tokenizer."""
    from scalingfilter.models.gpt import ModelShape, make_config, make_model

    tok = hf[1]
    config = make_config(ModelShape(2, 32, 2), len(tok), 16, tok.bos_token_id, tok.eos_token_id)
    return make_model(config, seed=0).eval()


def test_default_context_is_the_models_positions(random_model, hf):
    """max_len defaults to n_positions: a LAMBADA passage longer than 16 positions is cut, not an index error."""
    tok = hf[1]
    lm = LanguageModel(random_model, tok)
    assert lm.max_len == 16
    item = {"context": "The storm had passed by morning, and the fishermen walked down to the harbour to count their", "continuation": "boats"}
    context, target = ids(tok, item["context"]), ids(tok, " " + item["continuation"])
    keep = 16 - 1 - len(target)
    assert len(context) > keep
    got = evals.score_lambada(lm, [item])
    want = -by_hand(random_model, tok, context[-keep:], target)[0] / math.log(2)
    assert got["lambada_bpb"].num[0] == pytest.approx(want, abs=1e-4)


def test_trained_model_beats_an_untrained_one(lm, random_model, hf):
    """The bundled small model (trained on real text) spends far fewer bits per byte on LAMBADA passages and
    held-out prose than an untrained model, which is near log2(vocabulary) bits a token."""
    untrained = LanguageModel(random_model, hf[1])
    docs = [(it["context"] + " " + it["continuation"], "prose") for it in LAMBADA]
    trained_bpb = evals.heldout_bpb(lm, docs)["heldout_bpb"].value()
    untrained_bpb = evals.heldout_bpb(untrained, docs)["heldout_bpb"].value()
    assert trained_bpb < 0.6 * untrained_bpb
    assert evals.score_lambada(lm, LAMBADA)["lambada_bpb"].value() < evals.score_lambada(untrained, LAMBADA)["lambada_bpb"].value()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_score_shared_equals_score(hf, impl):
    """Options scored in one tree row after their shared context give `score`'s numbers, with either mask form."""
    model, tok = hf
    model.config._attn_implementation = impl
    try:
        lm = LanguageModel(model, tok, max_tokens_per_batch=64)
        assert lm.share_contexts
        contexts = [ids(tok, it["query"] + "\nAnswer:") for it in CHOICES] + [ids(tok, LAMBADA[0]["context"])]
        groups = [[ids(tok, " " + c) for c in it["choices"]] for it in CHOICES] + [[ids(tok, " dog"), ids(tok, " cat sat")]]
        got = lm.score_shared(contexts, groups)
        want = lm.score([c for c, g in zip(contexts, groups) for _ in g], [t for g in groups for t in g])
        assert got.logprob == pytest.approx(want.logprob, abs=1e-5)
        assert got.greedy.tolist() == want.greedy.tolist() and got.n_tokens.tolist() == want.n_tokens.tolist()
        lm.share_contexts = False  # the fallback (models that cannot take a prepared mask) is `score` itself
        assert lm.score_shared(contexts, groups).logprob == pytest.approx(want.logprob, abs=1e-5)
    finally:
        model.config._attn_implementation = "sdpa"


# ---------------------------------------------------------------------------------------------
# Eval sets from the hub: rows of the hub's schemas become items of the files' schemas; no hub, one line


def test_hub_rows_become_items_that_pass_the_file_checks():
    from scalingfilter.stages.ablate.evals import CHECKS, arc_item, blimp_item, lambada_item

    arc = arc_item({"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["1", "2", "3"]},
                    "answerKey": "2"}, 7)
    assert arc == {"id": "arc_easy-7", "query": "Question: Which is a gas?", "choices": ["ice", "steam", "rock"], "gold": 1}
    bad_key = arc_item({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"}, 0)
    assert CHECKS["arc_easy"](arc) is None and "gold" in CHECKS["arc_easy"](bad_key)
    lam = lambada_item({"text": "He opened the door and saw his old friend Tom\n"}, 3)
    assert lam["context"] == "He opened the door and saw his old friend" and lam["continuation"] == "Tom"
    assert CHECKS["lambada"](lam) is None and CHECKS["lambada"](lambada_item({"text": "oneword"}, 0)) is not None
    bl = blimp_item({"sentence_good": "Cats sleep.", "sentence_bad": "Cats sleeps.", "field": "morphology", "UID": "agr",
                     "linguistics_term": "s-v", "pair_id": 4}, "agr")
    assert bl["id"] == "blimp-agr-4" and CHECKS["blimp"](bl) is None


def test_eval_sets_from_an_unreachable_hub_are_one_line_naming_the_way_out(monkeypatch):
    pytest.importorskip("datasets")
    from scalingfilter.errors import InputError
    from scalingfilter.stages.ablate.evals import load_eval_sets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="cannot read the blimp eval set from the Hugging Face hub") as err:
        load_eval_sets(None, hub=True)
    assert "\n" not in str(err.value) and "--eval-dir" in err.value.cli_message()
