"""Selection: exact global thresholds (checked against an in-memory sort), fractions, seeds, null scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from scalingfilter.cli import main as cli_main
from scalingfilter.documents import find_scored_files, read_records, write_records
from scalingfilter.selection import (
    SCORE_FIELDS, SelectionError, load_selection_mask, rank_interval, select_corpus, select_mask, sort_keys,
)

FILES = ["a.jsonl", "sub/b.jsonl.gz", "sub/deeper/c.parquet"]


def scored_record(doc_id: int, rng: np.random.Generator, tie_values=None) -> dict:
    n_tokens = int(rng.integers(2, 400))
    small = float(rng.uniform(2, 6))
    large = small - float(rng.uniform(-0.2, 1.0))
    if tie_values is not None and rng.random() < 0.3:  # many exact ties
        small, large = tie_values
    qf = math.exp(small - large)
    return {"id": doc_id, "text": f"document {doc_id}", "meta": {"n": doc_id}, "small_loss": small, "large_loss": large,
            "small_ppl": math.exp(small), "large_ppl": math.exp(large), "quality_factor": qf, "n_tokens": n_tokens,
            "truncated": n_tokens >= 390, "score_error": None}


def unscored_record(doc_id: int) -> dict:
    return {"id": doc_id, "text": "x", "meta": {"n": doc_id}, "small_loss": None, "large_loss": None, "small_ppl": None,
            "large_ppl": None, "quality_factor": None, "n_tokens": 1, "truncated": False,
            "score_error": "too short to score: 1 token (need at least 2)"}


def make_scored_dir(root: Path, n_per_file=(120, 90, 150), seed=0, unscored_every=17) -> list[dict]:
    """Write a scored directory (three files, three formats); return all records in corpus order."""
    rng = np.random.default_rng(seed)
    all_records = []
    doc_id = 0
    for rel, n in zip(FILES, n_per_file):
        records = []
        for _ in range(n):
            if unscored_every and doc_id % unscored_every == 5:
                records.append(unscored_record(doc_id))
            else:
                records.append(scored_record(doc_id, rng, tie_values=(4.0, 3.5)))
            doc_id += 1
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_records(root / rel, records)
        all_records.extend(records)
    (root / "summary.json").write_text("{}")
    (root / "rejects").mkdir()
    write_records(root / "rejects" / "a.jsonl", [{"source": "a.jsonl", "index": 3, "reason": "malformed JSON"}])
    return all_records


def kept_ids(out: Path) -> list[int]:
    ids = []
    for rel in find_scored_files(out):
        ids.extend(r.data["id"] for r in read_records(out / rel, rel))
    return ids


def reference_selection(records, method, keep, by, seed=0, temperature=1.0):
    """What a plain in-memory sort of all scores keeps: the slow, obvious way."""
    qf = np.array([r["quality_factor"] if r["quality_factor"] is not None else np.nan for r in records], dtype=float)
    ppl = np.array([r["large_ppl"] if r["large_ppl"] is not None else np.nan for r in records], dtype=float)
    keys = sort_keys(method, qf, ppl, seed, temperature)
    pool = sorted((k, pos) for pos, k in enumerate(keys.tolist()) if not math.isnan(k))
    tokens = [records[pos]["n_tokens"] for _, pos in pool]
    n, total = len(pool), sum(tokens)
    centred = method == "perplexity-gating"
    if by == "documents":
        k = int(math.floor(keep * n + 0.5))
        a = (n - k) // 2 if centred else 0
        chosen = pool[a : a + k]
    else:
        a = 0
        if centred:  # drop whole documents from the low end while their tokens fit in (1-keep)/2
            low = 0
            while a < n and low + tokens[a] <= (1 - keep) / 2 * total:
                low += tokens[a]
                a += 1
        chosen, got = [], 0
        for i in range(a, n):
            if got >= keep * total:
                break
            chosen.append(pool[i])
            got += tokens[i]
    return sorted(records[pos]["id"] for _, pos in chosen)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    return root, make_scored_dir(root)


@pytest.mark.parametrize("method", ["top-k", "perplexity-gating", "random", "temperature"])
@pytest.mark.parametrize("by", ["documents", "tokens"])
def test_kept_set_equals_in_memory_sort(scored, tmp_path, method, by):
    root, records = scored
    out = tmp_path / "out"
    m = select_corpus(root, out, keep=0.7, method=method, by=by, seed=3, temperature=2.0)
    got = sorted(kept_ids(out))
    assert got == reference_selection(records, method, 0.7, by, seed=3, temperature=2.0)
    assert m["documents_selected"] == len(got) == m["documents_out"]
    # the output mirrors the input layout and formats, without the rejects or summary
    assert find_scored_files(out) == sorted(FILES)
    assert (out / "sub/deeper/c.parquet").read_bytes()[:4] == b"PAR1"
    assert (out / "sub/b.jsonl.gz").read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.7, 0.93, 1.0])
def test_fractions_met_within_one_document(scored, tmp_path, keep):
    root, records = scored
    pool = [r for r in records if r["quality_factor"] is not None]
    total_tokens = sum(r["n_tokens"] for r in pool)
    max_doc = max(r["n_tokens"] for r in pool)
    for method in ("top-k", "perplexity-gating", "random"):
        m = select_corpus(root, tmp_path / f"d-{method}", keep=keep, method=method, by="documents")
        assert abs(m["documents_selected"] - keep * len(pool)) <= 1
        m = select_corpus(root, tmp_path / f"t-{method}", keep=keep, method=method, by="tokens")
        assert abs(m["tokens_selected"] - keep * total_tokens) <= max_doc
        assert m["tokens_selected"] == m["tokens_out"]


def test_same_seed_same_sample(scored, tmp_path):
    root, _ = scored
    for method in ("random", "temperature"):
        a = select_corpus(root, tmp_path / f"{method}1", keep=0.5, method=method, seed=7)
        b = select_corpus(root, tmp_path / f"{method}2", keep=0.5, method=method, seed=7)
        c = select_corpus(root, tmp_path / f"{method}3", keep=0.5, method=method, seed=8)
        s1, s2, s3 = (kept_ids(tmp_path / f"{method}{i}") for i in (1, 2, 3))
        assert s1 == s2 and s1 != s3
        assert a["seed"] == b["seed"] == 7 and c["seed"] == 8


def test_null_scores_reported_never_silent(scored, tmp_path):
    root, records = scored
    unscored_ids = {r["id"] for r in records if r["quality_factor"] is None}
    assert unscored_ids
    m = select_corpus(root, tmp_path / "ex", keep=1.0)
    assert m["documents_unscored"] == len(unscored_ids)
    assert m["unscored_reasons"] == {"too short to score": len(unscored_ids)}
    listed = [orjson.loads(line) for line in (tmp_path / "ex" / ".scalingfilter" / "unscored.jsonl").read_bytes().splitlines()]
    assert {e["source"] for e in listed} <= set(FILES) and len(listed) == len(unscored_ids)
    assert not unscored_ids & set(kept_ids(tmp_path / "ex"))
    assert m["documents_out"] == len(records) - len(unscored_ids)
    m = select_corpus(root, tmp_path / "keep", keep=1.0, unscored="keep")
    assert unscored_ids <= set(kept_ids(tmp_path / "keep"))
    assert m["documents_out"] == len(records)


def test_ties_broken_by_corpus_position(tmp_path):
    root = tmp_path / "ties"
    root.mkdir()
    recs = [{"id": i, "text": "t", "quality_factor": 1.5 if i % 2 else 2.0, "large_ppl": 10.0, "n_tokens": 5, "score_error": None}
            for i in range(10)]
    write_records(root / "x.jsonl", recs[:5])
    write_records(root / "y.jsonl", recs[5:])
    select_corpus(root, tmp_path / "o", keep=0.7)  # 7 of 10: the five 2.0s, then the first two 1.5s
    assert sorted(kept_ids(tmp_path / "o")) == [0, 1, 2, 3, 4, 6, 8]
    select_corpus(root, tmp_path / "g", keep=0.4, method="perplexity-gating")  # all equal: positions 3..6
    assert sorted(kept_ids(tmp_path / "g")) == [3, 4, 5, 6]


def test_output_keeps_fields_and_drop_score_fields(scored, tmp_path):
    root, records = scored
    by_id = {r["id"]: r for r in records}
    select_corpus(root, tmp_path / "o", keep=0.3)
    for rel in find_scored_files(tmp_path / "o"):
        for r in read_records(tmp_path / "o" / rel, rel):
            assert list(r.data) == list(by_id[r.data["id"]])
            assert r.data == by_id[r.data["id"]]
    select_corpus(root, tmp_path / "d", keep=0.3, drop_score_fields=True)
    for rel in find_scored_files(tmp_path / "d"):
        for r in read_records(tmp_path / "d" / rel, rel):
            assert not set(SCORE_FIELDS) & set(r.data) and set(r.data) == {"id", "text", "meta"}


def test_manifest_and_mask(scored, tmp_path):
    root, records = scored
    m = select_corpus(root, tmp_path / "o", keep=0.7, method="perplexity-gating")
    on_disk = orjson.loads((tmp_path / "o" / "selection.json").read_bytes())
    assert on_disk["method"] == "perplexity-gating" and on_disk["keep"] == 0.7
    th = m["thresholds"]
    assert th["large_ppl_low"] < th["large_ppl_high"]
    lo_q, hi_q = th["quantiles_of_pool"]
    assert abs(lo_q - 0.15) < 0.02 and abs(hi_q - 0.85) < 0.02
    assert m["documents_in"] == len(records) and m["tokens_in"] == sum(r["n_tokens"] for r in records)
    assert sum(f["documents_in"] for f in m["files"]) == len(records)
    mask = load_selection_mask(tmp_path / "o")
    assert mask["files"] == sorted(FILES) and int(mask["kept"].sum()) == m["documents_selected"]
    kept_by_mask = sorted(records[i]["id"] for i in np.flatnonzero(mask["kept"]))
    assert kept_by_mask == sorted(kept_ids(tmp_path / "o"))
    m = select_corpus(root, tmp_path / "t", keep=0.7)
    kept_qf = [r["quality_factor"] for r in records if r["id"] in set(kept_ids(tmp_path / "t"))]
    assert min(kept_qf) == m["thresholds"]["quality_factor"]


def test_temperature_limits_and_probabilities():
    rng = np.random.default_rng(0)
    qf = rng.uniform(0.5, 3.0, 500)
    top, _, _ = select_mask("top-k", 0.3, qf)
    cold, _, _ = select_mask("temperature", 0.3, qf, seed=1, temperature=1e-6)
    assert np.array_equal(top, cold)  # T -> 0 is top-k
    # Gumbel top-1 of three items: picked with probability proportional to qf ** (1 / T)
    w = np.array([1.0, 2.0, 4.0])
    counts = np.zeros(3)
    for seed in range(3000):
        mask, _, _ = select_mask("temperature", 1 / 3, w, seed=seed, temperature=2.0)
        counts += mask
    expected = w ** 0.5 / (w ** 0.5).sum()
    assert np.allclose(counts / counts.sum(), expected, atol=0.03)


def test_rank_interval_by_tokens_overshoots_less_than_one_document():
    keys = np.array([5.0, 1.0, 3.0, np.nan, 2.0, 4.0])
    tokens = np.array([10, 100, 10, 50, 10, 10])
    b = rank_interval(keys, 0.5, "tokens", tokens)  # target 70 of 140: key 1 (100 tokens) alone
    assert b.kept == 1 and b.upper == (1.0, 1)


def test_errors_and_cli(scored, tmp_path, capsys):
    root, _ = scored
    with pytest.raises(SelectionError):
        select_corpus(root, tmp_path / "x", keep=1.5)
    with pytest.raises(SelectionError):
        select_corpus(root, root / "inside", keep=0.5)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("not a selection")
    with pytest.raises(SelectionError, match="not empty"):
        select_corpus(root, busy, keep=0.5, force_overwrite=True)
    assert cli_main(["select", "--input-dir", str(root), "--output-dir", str(tmp_path / "c"), "--keep", "0.5",
                     "--method", "random", "--seed", "4"]) == 0
    assert "method random" in capsys.readouterr().out
    assert cli_main(["select", "--input-dir", str(root), "--output-dir", str(tmp_path / "c"), "--keep", "0.5"]) == 2
    assert "--force-overwrite" in capsys.readouterr().err
    assert cli_main(["select", "--input-dir", str(root), "--output-dir", str(tmp_path / "c"), "--keep", "0.5",
                     "--force-overwrite", "--by", "tokens"]) == 0
