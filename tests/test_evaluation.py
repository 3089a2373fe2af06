"""AUROC and pair win rate (scalingfilter.stages.evaluate) and `scalingfilter evaluate`."""

from __future__ import annotations

import itertools
import json
import math
import sys

import numpy as np
import pytest

from scalingfilter.cli.app import main
from scalingfilter.errors import InputError
from scalingfilter.io.writers import write_records
from scalingfilter.stages.evaluate import auroc, evaluate_dir, evaluate_records, format_table, pair_win_rate
from scalingfilter.jobs.state import SUMMARY_NAME


def mark_scored(directory):
    """What `scalingfilter score` leaves when it has finished: summary.json beside the data files."""
    (directory / SUMMARY_NAME).write_text(json.dumps({"files": 1, "files_done": 1}))
    return directory


def rank_auroc(scores, labels):
    """The Mann-Whitney U from average ranks."""
    from scipy.stats import rankdata

    y = np.asarray(labels) == max(labels)
    ranks = rankdata(np.asarray(scores, dtype=float))
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == max(labels)]
    neg = [s for s, y in zip(scores, labels) if y != max(labels)]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pair_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1
    scores = rng.integers(0, 6, n).astype(float)  # many ties
    assert auroc(scores, labels) == pytest.approx(brute_auroc(list(scores), list(labels)), abs=1e-12)
    assert auroc(scores, labels) == pytest.approx(rank_auroc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_auroc_is_the_pairwise_probability_without_scikit_learn(seed, monkeypatch):
    """auroc (scipy's average ranks) against the definition, counted pair by pair in O(n^2): P(positive scores
    higher than negative) + 1/2 P(tie). Float scores with many exact ties, unbalanced classes, labels of any
    kind (the larger value is positive); scikit-learn blocked: nothing in scalingfilter may need it."""
    for name in ["sklearn", *(m for m in sys.modules if m.startswith("sklearn."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import sklearn...` fails, even if another test imported it
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(40, 300))
    scores = np.where(rng.random(n) < 0.5, rng.choice([-0.25, 0.0, 0.1, 1e-9, 3.5], n), rng.normal(0, 1, n))  # half tied
    labels = np.where(rng.random(n) < 0.2, "good", "bad")  # unbalanced; "good" > "bad"
    labels[:2] = ["bad", "good"]
    pos = [s for s, y in zip(scores, labels) if y == "good"]
    neg = [s for s, y in zip(scores, labels) if y == "bad"]
    pairwise = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))
    assert auroc(scores.tolist(), labels.tolist()) == pytest.approx(pairwise, abs=1e-12)
    assert auroc((-scores).tolist(), labels.tolist()) == pytest.approx(1 - pairwise, abs=1e-12)  # reversed scores


def test_auroc_edge_cases():
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.9, 0.5], ["bad", "good", "bad"]) == 1.0  # positive = the larger label value
    assert math.isnan(auroc([1, 2], [1, 1]))
    with pytest.raises(ValueError):
        auroc([1, 2, 3], [0, 1, 2])


def test_pair_win_rate():
    scores = [0.9, 0.1, 0.2, 0.8, 0.5, 0.5, 0.3, 0.7]
    labels = [1, 0, 1, 0, 1, 0, 1, 1]
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]  # d: same labels, not compared
    rate, n = pair_win_rate(scores, labels, groups)
    assert n == 3 and rate == pytest.approx((1 + 0 + 0.5) / 3)
    # a group of three: 2 comparable pairs (the two negatives are not compared with each other)
    rate, n = pair_win_rate([3, 1, 4], [1, 0, 0], ["g", "g", "g"])
    assert n == 2 and rate == 0.5
    assert math.isnan(pair_win_rate([1], [1], [None])[0])


def _scored_docs(n_pairs=30, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_pairs):
        for label in (1, 0):
            qf = float(rng.normal(1.2 if label else 1.0, 0.1))
            lp = float(rng.normal(3.0 if label else 3.5, 0.3))
            docs.append({"id": f"{i}/{label}", "text": "x" * (50 if label else 200), "label": label, "pair": str(i),
                         "quality_factor": qf, "large_ppl": math.exp(lp), "small_ppl": math.exp(lp) * qf,
                         "large_loss": lp, "small_loss": lp + math.log(qf), "n_tokens": 10, "truncated": False})
    return docs


def test_evaluate_dir_orientation_and_missing(tmp_path):
    docs = _scored_docs()
    docs[0].update(quality_factor=None, large_ppl=None, small_ppl=None)  # unscorable
    docs.append({"id": "nolabel", "text": "y", "quality_factor": 1.0})
    (tmp_path / "rejects").mkdir()
    write_records(tmp_path / "part-0.jsonl", docs[:30])
    write_records(tmp_path / "part-1.jsonl.gz", docs[30:])
    write_records(tmp_path / "rejects" / "part-0.jsonl", [{"label": 5, "quality_factor": 1}])  # must be ignored
    res = evaluate_dir(mark_scored(tmp_path))
    m = {r["name"]: r for r in res["metrics"]}
    assert res["labelled"] == 60 and res["documents"] == 61
    assert m["quality_factor"]["missing"] == 1 and m["quality_factor"]["n"] == 59
    assert m["length"]["missing"] == 0
    labelled = [d for d in docs if "label" in d]
    for name, sign in (("quality_factor", 1), ("large_ppl", -1), ("small_ppl", -1)):
        kept = [d for d in labelled if d[name] is not None]
        expect = brute_auroc([sign * d[name] for d in kept], [d["label"] for d in kept])
        assert m[name]["auroc"] == pytest.approx(expect, abs=1e-12)
    assert m["large_ppl"]["auroc"] > 0.8  # lower perplexity for the positives: oriented as "lower is better"
    assert m["length"]["auroc"] == 0.0 and m["length"]["pair_win"] == 0.0  # positives are shorter
    assert m["quality_factor"]["pairs"] == 29  # the pair with the unscored document drops out
    table = format_table(res)
    assert "pair win rate" in table and table.count("\n") == 1 + len(res["metrics"])


def test_evaluate_without_pairs_and_bad_labels():
    docs = [({"label": y, "quality_factor": q}, "t") for y, q in [(0, 1.0), (1, 2.0), (1, 3.0)]]
    res = evaluate_records(docs)
    qf = res["metrics"][0]
    assert res["pair_field"] is None and qf["pair_win"] is None and qf["auroc"] == 1.0
    with pytest.raises(InputError, match="exactly two values"):
        evaluate_records([({"label": v, "quality_factor": 1.0}, "t") for v in (0, 1, 2)])
    with pytest.raises(InputError, match="no document has"):
        evaluate_records([({"quality_factor": 1.0}, "t")])
    # documents left out are counted by reason; JSON true/false count as 1/0
    mixed = docs + [({"label": True, "quality_factor": 4.0}, "t"), ({"label": None, "quality_factor": 1.0}, "t"),
                    ({"label": [1], "quality_factor": 1.0}, "t"), ({"quality_factor": 1.0}, "t"), (None, None)]
    res = evaluate_records(mixed)
    assert res["labelled"] == 4 and res["label_values"] == [0, 1] and res["metrics"][0]["auroc"] == 1.0
    assert res["unlabelled"] == {"null label": 1, "label not a single value": 1, "no label": 1, "not a JSON object": 1}


def test_evaluate_cli(tmp_path, capsys):
    write_records(tmp_path / "s.jsonl", _scored_docs(10))
    mark_scored(tmp_path)
    assert main(["evaluate", "--input-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in out["metrics"]] == ["quality_factor", "large_ppl", "small_ppl", "length"]
    assert out["metrics"][0]["pairs"] == 10
    assert main(["evaluate", "--input-dir", str(tmp_path)]) == 0
    assert "| quality factor" in capsys.readouterr().out
    assert main(["evaluate", "--input-dir", str(tmp_path), "--label-field", "nope"]) == 2
    assert main(["evaluate", "--input_dir", str(tmp_path), "--label_field", "label", "--pair_field", "pair",
                 "--text_field", "text", "--json"]) == 0  # the underscore spellings
    assert json.loads(capsys.readouterr().out)["metrics"][0]["pairs"] == 10
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--input-dir", str(mark_scored(empty))]) == 2
    assert "no scored data files" in capsys.readouterr().err


def test_a_directory_that_was_never_scored_is_refused(tmp_path, capsys):
    write_records(tmp_path / "s.jsonl", _scored_docs(3))  # data files, but no summary.json
    assert main(["evaluate", "--input-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is this a `scalingfilter score` output?" in err and err.count("\n") == 1
    with pytest.raises(InputError, match="is this a `scalingfilter score` output"):
        evaluate_dir(tmp_path)
    assert main(["evaluate", "--input-dir", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_qf_distilled_is_reported_beside_the_quality_factor(tmp_path, capsys):
    rng = np.random.default_rng(3)
    docs = _scored_docs(20)
    for d in docs:  # a distilled score: a noisy probability, higher for the positives
        d["qf_distilled"] = float(np.clip(rng.normal(0.6 if d["label"] else 0.4, 0.2), 0, 1))
    docs[0]["qf_distilled"] = None
    del docs[1]["qf_distilled"]
    write_records(tmp_path / "s.jsonl", docs)
    assert main(["evaluate", "--input-dir", str(mark_scored(tmp_path)), "--json"]) == 0
    metrics = {m["name"]: m for m in json.loads(capsys.readouterr().out)["metrics"]}
    assert list(metrics) == ["quality_factor", "qf_distilled", "large_ppl", "small_ppl", "length"]
    kept = [d for d in docs if d.get("qf_distilled") is not None]
    expect = brute_auroc([d["qf_distilled"] for d in kept], [d["label"] for d in kept])
    assert metrics["qf_distilled"]["auroc"] == pytest.approx(expect, abs=1e-12)
    assert metrics["qf_distilled"]["n"] == 38 and metrics["qf_distilled"]["missing"] == 2
    assert metrics["qf_distilled"]["pairs"] == 19  # the first pair lost a member
    assert main(["evaluate", "--input-dir", str(tmp_path)]) == 0
    assert "| distilled fastText" in capsys.readouterr().out

