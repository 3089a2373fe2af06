"""Selection: exact global thresholds (checked against an in-memory sort), fractions, seeds, null scores,
any score field, records written as they came in, the scored directory checked against its summary,
an interrupted selection redone, one run at a time, the command line."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import orjson
import pytest
import zstandard

from scalingfilter.cli.app import main as cli_main
from scalingfilter.io.records import read_records
from scalingfilter.io.walk import find_scored_files
from scalingfilter.io.writers import write_records
from scalingfilter.errors import InputError
from scalingfilter.stages.select import (
    ABORT_ENV, ABORT_EXIT_STATUS, IN_PROGRESS_NAME, MANIFEST_NAME, SCORE_FIELDS, SelectConfig, SelectionError,
    format_manifest, load_selection_mask, rank_interval, select_mask, sort_keys,
)
from scalingfilter.stages.select import select_corpus as select_corpus_guarded
from scalingfilter.io.locks import JobLock


def select_corpus(*args, **options):
    """select_corpus with the short-document guard off unless a test sets it: the tests here that are about
    something else (methods, ties, bytes, OUT's life) compare with references that rank every document."""
    options.setdefault("min_tokens", 0)
    return select_corpus_guarded(*args, **options)

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
    (root / "rejects").mkdir()
    write_records(root / "rejects" / "a.jsonl", [{"source": "a.jsonl", "index": 3, "reason": "malformed JSON"}])
    mark_as_scored(root, rejected={"a.jsonl": 1})
    return all_records


def mark_as_scored(root: Path, rejected: dict[str, int] | None = None) -> None:
    """Give a hand-made directory of scored files the state a finished `scalingfilter score` leaves:
    summary.json and one final marker per data file (records - rejected = the records in the file)."""
    files = find_scored_files(root)
    final = root / ".scalingfilter" / "final"
    final.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(files):
        n = sum(1 for _ in read_records(root / rel, rel))
        r = (rejected or {}).get(rel, 0)
        (final / f"{i}.json").write_bytes(orjson.dumps({"source": rel, "records": n + r, "scored": n, "unscorable": 0, "rejected": r}))
    (root / "summary.json").write_bytes(orjson.dumps({"files": len(files), "files_done": len(files)}))


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
    mark_as_scored(root)
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


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return it."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def select_argv(root: Path, out: Path, *extra: str) -> list[str]:
    """The select command line, the short-document guard off unless `extra` sets it (the last flag wins)."""
    return ["select", "--input-dir", str(root), "--output-dir", str(out), "--min-tokens", "0", *extra]


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
    assert (busy / "mine.txt").read_text() == "not a selection"
    assert cli_main(select_argv(root, tmp_path / "c", "--keep", "0.5", "--method", "random", "--seed", "4")) == 0
    assert "method random" in capsys.readouterr().out
    assert "--force-overwrite" in one_error_line(capsys, select_argv(root, tmp_path / "c", "--keep", "0.5"))
    # both spellings of every flag
    assert cli_main(["select", "--input_dir", str(root), "--output_dir", str(tmp_path / "c"), "--keep", "0.5", "--force_overwrite",
                     "--by", "tokens", "--score_field", "quality_factor", "--drop_score_fields", "--method", "temperature",
                     "--temperature", "2", "--seed", "1", "--unscored", "keep"]) == 0
    m = orjson.loads((tmp_path / "c" / MANIFEST_NAME).read_bytes())
    assert (m["by"], m["drop_score_fields"], m["temperature"], m["seed"], m["unscored_policy"]) == ("tokens", True, 2.0, 1, "keep")
    # numbers are range-checked while parsing (argparse: exit 2 before any work)
    for bad in (["--keep", "0"], ["--keep", "1.5"], ["--keep", "nan"], ["--temperature", "0"], ["--seed", "-1"], ["--seed", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            cli_main(select_argv(root, tmp_path / "bad", *bad))
        assert exc.value.code == 2
    assert not (tmp_path / "bad").exists()
    # one place for the defaults: the API's and the command's are SelectConfig's
    assert SelectConfig().keep == 0.7 and m["score_field"] == SelectConfig().score_field == "quality_factor"


# --------------------------------------------------------------------------------------------------
# Any score field (issue 13)


def reference_keys(method, score, ppl, seed=0, temperature=1.0):
    """The documented sort keys, written out: -score; -(log score / T + Gumbel); -uniform; large_ppl."""
    score, ppl = np.asarray(score, float), np.asarray(ppl, float)
    u = np.random.default_rng(seed).random(len(score))
    with np.errstate(divide="ignore"):
        keys = {"top-k": -score, "perplexity-gating": ppl.copy(), "random": -u,
                "temperature": -(np.log(score) / temperature - np.log(-np.log(u)))}[method]
    keys[np.isnan(score) | (np.isnan(ppl) if method == "perplexity-gating" else False)] = np.nan
    return keys


def distilled_dir(root: Path) -> list[dict]:
    """A scored directory where three documents in four also have `qf_distilled` (a probability)."""
    records = make_scored_dir(root, n_per_file=(60, 40, 50), seed=5)
    rng = np.random.default_rng(9)
    for r in records:
        if (r["id"] + 1) % 4:  # the parquet file's first record has it (its schema is the first record's)
            r["qf_distilled"] = float(rng.uniform(0, 1)) if r["id"] % 13 else 0.25  # some exact ties
    bounds = np.cumsum([0, 60, 40, 50])
    for rel, a, b in zip(FILES, bounds[:-1], bounds[1:]):
        write_records(root / rel, records[a:b])
    return records


@pytest.mark.parametrize("method", ["top-k", "perplexity-gating", "random", "temperature"])
def test_score_field_every_method(tmp_path, method):
    root = tmp_path / "scored"
    records = distilled_dir(root)
    m = select_corpus(root, tmp_path / "o", keep=0.6, method=method, seed=2, temperature=3.0, score_field="qf_distilled")
    score = [r.get("qf_distilled", np.nan) for r in records]
    ppl = [np.nan if r["large_ppl"] is None else r["large_ppl"] for r in records]
    keys = reference_keys(method, score, ppl, seed=2, temperature=3.0)
    pool = sorted((k, pos) for pos, k in enumerate(keys.tolist()) if not math.isnan(k))
    k = int(math.floor(0.6 * len(pool) + 0.5))
    a = (len(pool) - k) // 2 if method == "perplexity-gating" else 0
    assert sorted(kept_ids(tmp_path / "o")) == sorted(records[pos]["id"] for _, pos in pool[a : a + k])
    assert m["score_field"] == "qf_distilled" and m["documents_scored"] == len(pool)
    assert m["documents_unscored"] == len(records) - len(pool)
    reasons = m["unscored_reasons"]  # parquet stores a missing field as null
    missing = [r for r in records if "qf_distilled" not in r and (method != "perplexity-gating" or r["large_ppl"] is not None)]
    assert reasons["no 'qf_distilled' field"] + reasons["qf_distilled is null"] == len(missing)
    if method == "perplexity-gating":  # the gate's field is `score`'s: a record it could not score says why
        assert reasons["too short to score"] == sum(r["large_ppl"] is None for r in records)
    if method == "top-k":
        assert m["thresholds"]["qf_distilled"] == -pool[k - 1][0]
        assert "threshold: qf_distilled >=" in format_manifest(m)


def test_score_field_nobody_has_is_one_line_error(scored, tmp_path, capsys):
    root, _ = scored
    err = one_error_line(capsys, select_argv(root, tmp_path / "o", "--score-field", "qf_distilled"))
    assert "'qf_distilled'" in err and "--score-field" in err
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file() and p.name != "lock"]
    assert cli_main(select_argv(root, tmp_path / "o")) == 0  # the lock a failed run leaves does not make OUT "not empty"
    with pytest.raises(SelectionError, match="negative"):  # score^(1/T) needs a non-negative score
        select_mask("temperature", 0.5, np.array([0.5, -1.0, 2.0]))


# --------------------------------------------------------------------------------------------------
# Records come out exactly as they came in (issue 9.10)


MEMBERS = [  # (key, JSON text) of each member of three scored lines, as written
    [("id", "1"), ("text", '"caf\u00e9 \\u00e9 \u65e5\u672c \\ud83d\\ude00"'), ("big", "123456789012345678901234567890"),
     ("f", "0.1"), ("g", "1.50"), ("e", "1e5"), ("nested", '{"n": -98765432109876543210987654321, "l": [1.0, 2]}'),
     ("small_loss", "3.0"), ("large_loss", "2.0"), ("small_ppl", "20.085536923187668"), ("large_ppl", "7.38905609893065"),
     ("quality_factor", "2.718281828459045"), ("n_tokens", "7"), ("truncated", "false"), ("score_error", "null")],
    [("id", "2"), ("quality_factor", "1.25"), ("text", '"x y"'), ("large_ppl", "4.0"), ("n_tokens", "3"),
     ("score_error", "null"), ("big", "-18446744073709551617")],
    [("id", "3"), ("text", '"low"'), ("quality_factor", "0.5"), ("large_ppl", "9.5"), ("n_tokens", "2"), ("score_error", "null")],
]


def member_line(members, sep=",") -> bytes:
    return ("{" + sep.join(f'"{k}":{v}' if sep == "," else f'"{k}": {v}' for k, v in members) + "}\n").encode()


def test_kept_records_are_the_original_bytes(tmp_path):
    root = tmp_path / "scored"
    root.mkdir()
    lines = [member_line(MEMBERS[0]), member_line(MEMBERS[1], sep=", "), member_line(MEMBERS[2])]
    (root / "a.jsonl").write_bytes(b"".join(lines))
    (root / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(lines)))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)))
    mark_as_scored(root)
    select_corpus(root, tmp_path / "all", keep=1.0)
    assert (tmp_path / "all" / "a.jsonl").read_bytes() == b"".join(lines)
    assert gzip.decompress((tmp_path / "all" / "b.jsonl.gz").read_bytes()) == b"".join(lines)
    with zstandard.ZstdDecompressor().stream_reader((tmp_path / "all" / "c.jsonl.zst").read_bytes()) as fh:
        assert fh.read() == b"".join(lines)
    (root / "c.jsonl.zst").unlink()  # the rest of the test counts on two files
    shutil.rmtree(root / ".scalingfilter" / "final")
    mark_as_scored(root)
    select_corpus(root, tmp_path / "top", keep=0.5)  # 3 of 6: both copies of line 1, the first copy of line 2
    assert (tmp_path / "top" / "a.jsonl").read_bytes() == lines[0] + lines[1]
    assert gzip.decompress((tmp_path / "top" / "b.jsonl.gz").read_bytes()) == lines[0]

    select_corpus(root, tmp_path / "drop", keep=1.0, drop_score_fields=True)
    got = (tmp_path / "drop" / "a.jsonl").read_bytes().splitlines(keepends=True)
    for line, members, out in zip(lines, MEMBERS, got):
        rest = [(k, v) for k, v in members if k not in SCORE_FIELDS]
        sep = ", " if b'", ' in line else ","
        assert out == ("{" + ",".join((f'"{k}": {v}' if sep != "," else f'"{k}":{v}') for k, v in rest) + "}\n").encode()
        original = json.loads(line)  # the standard library keeps big integers exact
        assert json.loads(out) == {k: v for k, v in original.items() if k not in SCORE_FIELDS}
    assert b'"big":123456789012345678901234567890,"f":0.1,"g":1.50,"e":1e5' in got[0]
    assert gzip.decompress((tmp_path / "drop" / "b.jsonl.gz").read_bytes()) == b"".join(got)


def test_parquet_rows_keep_their_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "scored"
    root.mkdir()
    n = 11
    table = pa.table({
        "id": pa.array(range(n), pa.int8()),
        "text": pa.array([f"d\u00e9 {i}" for i in range(n)]),
        "tags": pa.array([[i, i * 10**15] for i in range(n)], pa.list_(pa.int64())),
        "quality_factor": pa.array([1.0 + (i * 7 % n) for i in range(n)]),
        "large_ppl": pa.array([3.0] * n),
        "n_tokens": pa.array([5] * n, pa.int64()),
        "score_error": pa.array([None] * n, pa.string()),
    })
    pq.write_table(table, root / "c.parquet", row_group_size=4)
    mark_as_scored(root)
    select_corpus(root, tmp_path / "o", keep=0.5)
    qf = table.column("quality_factor").to_numpy()
    expected = table.filter(pa.array(qf >= np.sort(qf)[::-1][5]))  # 6 of 11, distinct scores
    got = pq.read_table(tmp_path / "o" / "c.parquet")
    assert got.schema.equals(table.schema) and got.equals(expected)
    select_corpus(root, tmp_path / "d", keep=0.5, drop_score_fields=True)
    got = pq.read_table(tmp_path / "d" / "c.parquet")
    assert got.column_names == ["id", "text", "tags"] and got.equals(expected.select(["id", "text", "tags"]))


# --------------------------------------------------------------------------------------------------
# The scored directory is checked against its summary (issues 9.7, 9.18)


@pytest.fixture()
def small_scored(tmp_path):
    root = tmp_path / "scored"
    make_scored_dir(root, n_per_file=(10, 10, 10))
    return root


def test_never_scored_directory_is_refused(small_scored, tmp_path, capsys):
    (small_scored / "summary.json").unlink()
    err = one_error_line(capsys, select_argv(small_scored, tmp_path / "o"))
    assert "no summary.json" in err and "is this a `scalingfilter score` output?" in err
    assert not (tmp_path / "o").exists()
    raw = tmp_path / "raw"
    raw.mkdir()
    write_records(raw / "x.jsonl", [{"text": "never scored"}])
    assert "is this a `scalingfilter score` output?" in one_error_line(capsys, select_argv(raw, tmp_path / "o"))


@pytest.mark.parametrize("damage, named", [
    ("missing file", "sub/b.jsonl.gz is listed as scored but missing"),
    ("unmarked file", "extra.jsonl has no final marker"),
    ("extra line", "a.jsonl has 120 records, its final marker says 119"),
    ("lost line", "a.jsonl has 9 records, its final marker says 10"),
    ("unfinished", "says 2 of 3 files are done"),
])
def test_scored_directory_inconsistent_with_its_summary(tmp_path, capsys, damage, named):
    root = tmp_path / "scored"
    make_scored_dir(root, n_per_file=(10, 10, 10) if damage != "extra line" else (119, 10, 10))
    if damage == "missing file":
        (root / "sub/b.jsonl.gz").unlink()
    elif damage == "unmarked file":
        write_records(root / "extra.jsonl", [{"text": "t", "quality_factor": 1.0, "large_ppl": 2.0, "n_tokens": 2}])
    elif damage == "extra line":
        with open(root / "a.jsonl", "ab") as fh:
            fh.write(b'{"text": "one more", "quality_factor": 1.0, "large_ppl": 2.0, "n_tokens": 2}\n')
    elif damage == "lost line":
        lines = (root / "a.jsonl").read_bytes().splitlines(keepends=True)
        (root / "a.jsonl").write_bytes(b"".join(lines[:-1]))
    else:
        (root / "summary.json").write_bytes(orjson.dumps({"files": 3, "files_done": 2}))
    err = one_error_line(capsys, select_argv(root, tmp_path / "o"))
    assert "is inconsistent with its summary" in err and "rerun `scalingfilter score`" in err and named in err
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file() and p.name != "lock"]


# --------------------------------------------------------------------------------------------------
# An interrupted selection is redone (issue 9.8); one run at a time (issue 9.4)


def output_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("lock", MANIFEST_NAME)}


def comparable_manifest(out: Path) -> dict:
    m = orjson.loads((out / MANIFEST_NAME).read_bytes())
    return {k: v for k, v in m.items() if k not in ("output_dir", "seconds")}


def test_interrupted_selection_is_redone_byte_identical(scored, tmp_path, caplog):
    root, _ = scored
    args = ("--keep", "0.6", "--method", "temperature", "--unscored", "keep", "--drop-score-fields")
    env = {**os.environ, ABORT_ENV: "2"}
    crashed = subprocess.run([sys.executable, "-m", "scalingfilter.cli", *select_argv(root, tmp_path / "out", *args)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == ABORT_EXIT_STATUS, crashed.stderr  # the hook ended it, after two files
    out = tmp_path / "out"
    assert (out / IN_PROGRESS_NAME).exists() and not (out / MANIFEST_NAME).exists()
    assert (out / "a.jsonl").exists() and (out / "sub/b.jsonl.gz").exists() and not (out / "sub/deeper/c.parquet").exists()
    with pytest.raises(InputError, match="unfinished selection"):
        load_selection_mask(out)
    (out / "sub/b.jsonl.gz").write_bytes(b"half a file")  # whatever the crash left is not trusted

    assert cli_main(select_argv(root, out, *args)) == 0  # no flag needed
    assert "holds an interrupted selection: removing it" in caplog.text
    assert cli_main(select_argv(root, tmp_path / "clean", *args)) == 0
    assert output_files(out) == output_files(tmp_path / "clean")
    assert set(output_files(out)) == {"a.jsonl", "sub/b.jsonl.gz", "sub/deeper/c.parquet",
                                      ".scalingfilter/unscored.jsonl", ".scalingfilter/selection.npz"}
    assert comparable_manifest(out) == comparable_manifest(tmp_path / "clean")
    assert not (out / IN_PROGRESS_NAME).exists()


def test_force_overwrite_replaces_complete_or_in_progress(scored, tmp_path):
    root, _ = scored
    out = tmp_path / "out"
    select_corpus(root, out, keep=0.5)
    (out / "a.jsonl").write_bytes(b"stale")
    with pytest.raises(SelectionError, match="holds an earlier selection; pass --force-overwrite"):
        select_corpus(root, out, keep=0.9)
    assert (out / "a.jsonl").read_bytes() == b"stale"  # refused: nothing touched
    m = select_corpus(root, out, keep=0.9, force_overwrite=True)
    assert m["keep"] == 0.9 and sorted(kept_ids(out)) == sorted(kept_ids_of(root, out))
    (out / MANIFEST_NAME).unlink()  # now only an in-progress one would be there: make it so
    (out / IN_PROGRESS_NAME).write_text("{}")
    m = select_corpus(root, out, keep=0.3, force_overwrite=True)
    assert m["keep"] == 0.3 and not (out / IN_PROGRESS_NAME).exists()


def kept_ids_of(root: Path, out: Path) -> list[int]:
    """The ids the keep mask of `out` marks, read from the scored directory."""
    mask = load_selection_mask(out)["kept"]
    ids = [r.data["id"] for rel in find_scored_files(root) for r in read_records(root / rel, rel)]
    return [i for i, k in zip(ids, mask) if k]


def test_second_select_on_the_same_output_is_refused(scored, tmp_path, capsys):
    root, _ = scored
    out = tmp_path / "out"
    with JobLock(out, "select"):
        err = one_error_line(capsys, select_argv(root, out))
    assert "is in use by another run" in err and f"select pid {os.getpid()}" in err
    assert not [p for p in out.rglob("*") if p.is_file() and p.name != "lock"]
    assert cli_main(select_argv(root, out)) == 0  # the lock of a finished holder is no obstacle


# --------------------------------------------------------------------------------------------------
# A select killed (SIGKILL) at any rename or unlink is finished by rerunning the same command


KILL_SYSCALLS = ("rename", "renameat", "renameat2", "unlink", "unlinkat")


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    r = subprocess.run(["strace", "-f", "-o", os.devnull, "true"], capture_output=True)
    return r.returncode == 0  # ptrace may be forbidden in a container


def _syscalls_of(trace: Path) -> Counter:
    """How many times each of KILL_SYSCALLS was entered, by name, from an `strace -f -o` trace."""
    counts: Counter = Counter()
    for line in trace.read_text().splitlines():
        m = re.match(r"^\d+\s+(\w+)\(", line)  # an entry ("<... NAME resumed>" lines are not)
        if m and m.group(1) in KILL_SYSCALLS:
            counts[m.group(1)] += 1
    return counts


@pytest.mark.skipif(not _strace_works(), reason="needs a working strace (syscall injection)")
def test_select_killed_at_every_rename_and_unlink_is_finished_by_its_rerun(small_scored, tmp_path, caplog):
    """strace kills `select` (SIGKILL, no cleanup) on entering its k-th rename (each atomic file: the
    in-progress marker first, the manifest last) or unlink, for every k; the same command, run again, must
    finish with exit 0 and the output of an uninterrupted run, byte for byte."""
    args = ("--keep", "0.6", "--method", "temperature", "--unscored", "keep", "--drop-score-fields")
    clean, trace = tmp_path / "clean", tmp_path / "trace.txt"
    cmd = [sys.executable, "-m", "scalingfilter.cli", *select_argv(small_scored, clean, *args)]
    r = subprocess.run(["strace", "-f", "-o", str(trace), "-e", f"trace={','.join(KILL_SYSCALLS)}", *cmd],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    counts = _syscalls_of(trace)
    renames = sum(n for name, n in counts.items() if name.startswith("rename"))
    assert renames >= 7, counts  # marker, three data files, unscored list, mask, manifest
    expected_files, expected_manifest = output_files(clean), comparable_manifest(clean)
    tried = 0
    for name, n in sorted(counts.items()):
        for k in range(1, n + 1):
            out = tmp_path / f"out-{name}-{k}"
            cmd = [sys.executable, "-m", "scalingfilter.cli", *select_argv(small_scored, out, *args)]
            killed = subprocess.run(["strace", "-f", "-o", os.devnull, "-e", f"trace={name}",
                                     "-e", f"inject={name}:signal=SIGKILL:when={k}", *cmd],
                                    capture_output=True, text=True, timeout=300)
            assert killed.returncode != 0, (name, k, killed.stderr[-2000:])  # it was killed, not finished
            assert cli_main(select_argv(small_scored, out, *args)) == 0, (name, k, caplog.text[-2000:])
            assert output_files(out) == expected_files, (name, k)  # no temporary left, every file as a clean run's
            assert comparable_manifest(out) == expected_manifest, (name, k)
            assert not (out / IN_PROGRESS_NAME).exists(), (name, k)
            tried += 1
    assert tried >= renames


def test_complete_selection_with_a_leftover_marker(small_scored, tmp_path):
    """Killed between writing the manifest and removing the in-progress marker: the same command redoes it
    without a flag; another command must still pass --force-overwrite (the selection there is complete)."""
    out = tmp_path / "out"
    select_corpus(small_scored, out, keep=0.5)
    reference = output_files(out)
    marker = {"pid": 1, "started": "then", "input_dir": str(small_scored), "config": asdict(SelectConfig(keep=0.5, min_tokens=0))}
    (out / IN_PROGRESS_NAME).write_bytes(orjson.dumps(marker))
    with pytest.raises(SelectionError, match="holds an earlier selection; pass --force-overwrite"):
        select_corpus(small_scored, out, keep=0.9)
    assert output_files(out) == {**reference, IN_PROGRESS_NAME: orjson.dumps(marker)}  # refused: nothing touched
    select_corpus(small_scored, out, keep=0.5)
    assert output_files(out) == reference and not (out / IN_PROGRESS_NAME).exists()


def test_temporaries_left_in_the_state_directory_do_not_block_the_rerun(small_scored, tmp_path):
    out = tmp_path / "out"
    (out / ".scalingfilter").mkdir(parents=True)
    (out / ".scalingfilter" / ".tmp-12345-0123abcd-selection.in-progress").write_text("{")  # killed before its rename
    select_corpus(small_scored, out, keep=0.5)
    assert not list((out / ".scalingfilter").glob(".tmp-*"))
    other = tmp_path / "other"  # anything else in OUT is still protected
    (other / ".scalingfilter").mkdir(parents=True)
    (other / ".scalingfilter" / "notes.txt").write_text("mine")
    with pytest.raises(SelectionError, match="holds no earlier selection"):
        select_corpus(small_scored, other, keep=0.5)


def test_node_parts_select_only_when_every_part_has_finished(tmp_path, capsys, monkeypatch):
    """Scored by node parts (--nparts 2): with only part 0 done, select refuses (it would silently select from
    half the corpus); with both, every document is there. Summaries from before node_parts was recorded say
    their range in their names: a gap is refused too."""
    from scalingfilter.stages.score import TEST_SCORER_ENV, score_corpus

    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    src, root = tmp_path / "in", tmp_path / "scored"
    src.mkdir()
    for f in range(4):
        write_records(src / f"f{f}.jsonl", [{"id": f * 10 + i, "text": f"file {f} document {i}"} for i in range(3)])
    score_corpus(src, root, nparts=2, rank_part_start=0, rank_nparts=1, show_progress=False)
    err = one_error_line(capsys, select_argv(root, tmp_path / "o", "--keep", "1.0"))
    assert "node part(s) 1 of 2 have no summary" in err, err
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file() and p.name != "lock"]
    score_corpus(src, root, nparts=2, rank_part_start=1, rank_nparts=1, show_progress=False)
    assert cli_main(select_argv(root, tmp_path / "o", "--keep", "1.0")) == 0
    assert sorted(kept_ids(tmp_path / "o")) == sorted(f * 10 + i for f in range(4) for i in range(3))
    # legacy part summaries (no node_parts): parts 0 and 2 only
    for name in ("summary.parts-0-0.json", "summary.parts-1-1.json"):
        (root / name).unlink()
    for name in ("summary.parts-0-0.json", "summary.parts-2-2.json"):
        (root / name).write_bytes(orjson.dumps({"files": 2, "files_done": 2}))
    assert "node part(s) 1 of 3 have no summary" in one_error_line(capsys, select_argv(root, tmp_path / "o2", "--keep", "1.0"))


def test_a_score_field_that_holds_no_number_is_one_line(small_scored, tmp_path, capsys):
    for field in ("text", "truncated"):
        err = one_error_line(capsys, select_argv(small_scored, tmp_path / field, "--score-field", field))
        assert f"the field {field!r} holds no usable score" in err


@pytest.mark.parametrize("method", ["top-k", "perplexity-gating"])
def test_min_tokens_leaves_short_documents_out_as_unscored(scored, tmp_path, method):
    """--min-tokens N: a document scored on fewer tokens joins the unscored (counted, listed, excluded); the rest
    are selected as if the short ones had no score. Without it, the manifest counts the short documents selected."""
    root, records = scored
    m = select_corpus(root, tmp_path / "plain", keep=0.7, method=method)
    from scalingfilter.stages.select_config import DEFAULT_MIN_TOKENS as n  # the note counts below the default guard

    short = [r["id"] for r in records if r["quality_factor"] is not None and r["n_tokens"] < n]
    assert short and m["min_tokens"] == 0
    assert m["selected_below_short_tokens"] == len(set(kept_ids(tmp_path / "plain")) & set(short)) > 0
    assert f"--min-tokens {n} leaves such documents out" in format_manifest(m)
    m = select_corpus(root, tmp_path / "min", keep=0.7, method=method, min_tokens=50)
    as_unscored = [dict(r, quality_factor=None, large_ppl=None) if r["n_tokens"] < 50 else r for r in records]
    assert sorted(kept_ids(tmp_path / "min")) == reference_selection(as_unscored, method, 0.7, "documents")
    n_short = sum(r["quality_factor"] is not None and r["n_tokens"] < 50 for r in records)
    assert m["unscored_reasons"]["fewer than 50 scored tokens (--min-tokens)"] == n_short
    assert m["selected_below_short_tokens"] == 0 and f"--min-tokens {n}" not in format_manifest(m)
    with pytest.raises(SelectionError, match=r"min_tokens=1000 leaves no document .* the longest has \d+\); lower it") as err:
        select_corpus(root, tmp_path / "none", keep=0.7, method=method, min_tokens=1000)
    assert err.value.cli_message().startswith("--min-tokens=1000 leaves no document")  # the CLI names the flag
    for bad, flag in (({"keep": 1.5}, "--keep=1.5"), ({"method": "best"}, "--method='best'"), ({"seed": -1}, "--seed=-1"),
                      ({"by": "pages"}, "--by='pages'"), ({"method": "temperature", "temperature": 0}, "--temperature=0")):
        with pytest.raises(SelectionError) as err:
            select_corpus(root, tmp_path / "bad", **bad)
        assert "--" not in str(err.value) and err.value.cli_message().startswith(flag), (bad, err.value.cli_message())


# --------------------------------------------------------------------------------------------------
# One answer to "is this a finished scored directory?" (issue 19.1): jobs.state.ScoredDir


def test_scored_dir_says_what_it_holds_and_what_to_run(small_scored, tmp_path):
    from scalingfilter.jobs.state import NotScoredError, ScoredDir, ScoringUnfinishedError

    d = ScoredDir.open(small_scored)
    files, expected = d.data_files()
    assert d.whole and (d.nparts, d.parts) == (1, (0,)) and files == find_scored_files(small_scored)
    assert expected == {"a.jsonl": 10, "sub/b.jsonl.gz": 10, "sub/deeper/c.parquet": 10}  # records - rejected
    assert d.kind == "score" and "quality_factor" in d.score_fields and d.settings is None
    assert sorted(d.versions()) == files and d.changed_since(d.versions()) == []
    with pytest.raises(NotScoredError, match="does not exist"):
        ScoredDir.open(tmp_path / "nowhere")
    # node parts: finished only when every part has its summary; a stage that needs summary.json says how to write it
    parts = tmp_path / "parts"
    shutil.copytree(small_scored, parts)
    (parts / "summary.json").unlink()
    node = {"files": 1, "files_done": 1, "settings": {"max_len": 64}}
    for k in (0, 2):
        (parts / f"summary.parts-{k}-{k}.json").write_bytes(orjson.dumps({**node, "node_parts": {"nparts": 3, "rank_part_start": k, "rank_nparts": 1}}))
    with pytest.raises(ScoringUnfinishedError, match=r"scored in node parts 0,2 of 3.*node part\(s\) 1 of 3 have no summary.*run the remaining parts"):
        ScoredDir.open(parts)
    (parts / "summary.parts-1-1.json").write_bytes(orjson.dumps({**node, "node_parts": {"nparts": 3, "rank_part_start": 1, "rank_nparts": 1}}))
    d = ScoredDir.open(parts)
    assert not d.whole and (d.nparts, d.parts, d.max_len) == (3, (0, 1, 2), 64)
    with pytest.raises(ScoringUnfinishedError, match="report needs summary.json.*no --nparts"):
        d.require_summary("report")


def test_a_classify_output_is_known_by_its_settings(small_scored, tmp_path, capsys):
    from scalingfilter.jobs.state import ScoredDir

    summary = orjson.loads((small_scored / "summary.json").read_bytes())
    settings = {"model_sha256": "0" * 64, "normalisation": "whitespace", "max_chars": 2560}
    (small_scored / "summary.json").write_bytes(orjson.dumps({**summary, "settings": settings}))
    d = ScoredDir.open(small_scored)
    assert d.kind == "classify" and d.score_fields == ("qf_distilled", "distill_error") and d.max_len is None
    err = one_error_line(capsys, select_argv(small_scored, tmp_path / "o", "--score-field", "qf_distilled_nope"))
    assert "classify` output, whose field is 'qf_distilled'" in err


def test_distill_keep_decision_is_select_top_k():
    """One top-k with ties by corpus position: distill's keep decision is exactly what select keeps."""
    from scalingfilter.stages.distill import top_k_decision

    rng = np.random.default_rng(5)
    qf = rng.choice([0.5, 1.0, 1.5, 2.0], size=1001)  # ties everywhere
    qf[rng.random(1001) < 0.1] = np.nan  # unscored
    for keep in (0.0, 0.3, 0.7, 1.0):
        mask, bounds, _ = select_mask("top-k", keep, qf)
        decision, lowest = top_k_decision(qf, keep)
        assert np.array_equal(decision, mask) and decision.sum() == bounds.kept
        assert lowest == (qf[mask].min() if mask.any() else np.inf)
        # ties at the threshold: the earlier ones are kept
        if 0 < mask.sum() < (~np.isnan(qf)).sum():
            at = np.flatnonzero(qf == lowest)
            assert not (~mask[at[:-1]] & mask[at[1:]]).any()


def classify_dir(root: Path, n: int = 40) -> list[dict]:
    """A `scalingfilter classify` output as it writes one: qf_distilled and distill_error, no token count; its
    summary's settings name the distilled model (ScoredDir.kind == 'classify')."""
    rng = np.random.default_rng(11)
    records = [{"id": i, "text": f"document {i}", "qf_distilled": float(rng.uniform(0, 1)), "distill_error": None} for i in range(n)]
    root.mkdir(parents=True)
    write_records(root / "a.jsonl", records)
    mark_as_scored(root)
    summary = orjson.loads((root / "summary.json").read_bytes())
    settings = {"model_sha256": "0" * 64, "normalisation": "whitespace", "max_chars": 2560}
    (root / "summary.json").write_bytes(orjson.dumps({**summary, "settings": settings}))
    return records


def test_token_choices_on_a_distilled_score_are_refused_in_one_line(tmp_path, capsys):
    """Issue 20 (20): a classify output's qf_distilled has no token count. --by tokens selected 0 documents with
    exit 0, and --min-tokens (as the default run's hint said) left none; both are refused with one line saying why,
    and the default run selects by documents with the guard marked not applicable and no hint about --min-tokens."""
    root = tmp_path / "classified"
    records = classify_dir(root)
    for extra, flag in ((("--by", "tokens"), "--by=tokens"), (("--min-tokens", "16"), "--min-tokens=16")):
        argv = ["select", "--input-dir", str(root), "--output-dir", str(tmp_path / "o"), "--score-field", "qf_distilled", *extra]
        err = one_error_line(capsys, argv)
        assert err.startswith(f"scalingfilter select: error: {flag} does not apply") and "no token count" in err, err
        assert not (tmp_path / "o" / MANIFEST_NAME).exists()
    assert cli_main(["select", "--input-dir", str(root), "--output-dir", str(tmp_path / "d"), "--score-field", "qf_distilled"]) == 0
    out = capsys.readouterr().out
    assert "40 scored, 28 selected" in out and "not applicable" in out and "--min-tokens" not in out, out
    m = orjson.loads((tmp_path / "d" / MANIFEST_NAME).read_bytes())
    assert m["min_tokens"] is None and m["selected_below_short_tokens"] is None
    best = sorted(records, key=lambda r: -r["qf_distilled"])[:28]
    assert sorted(kept_ids(tmp_path / "d")) == sorted(r["id"] for r in best)


def test_short_document_guard_is_on_by_default(scored, tmp_path, capsys):
    """Issue 20 (27): a quality factor over a handful of tokens is noise, and such documents topped the ranking;
    select leaves documents scored on fewer than DEFAULT_MIN_TOKENS tokens out by default, says so in the summary
    and the manifest, and --min-tokens 0 turns it off."""
    from scalingfilter.stages.select_config import DEFAULT_MIN_TOKENS

    root, records = scored
    m = select_corpus_guarded(root, tmp_path / "g", keep=0.7)
    n = DEFAULT_MIN_TOKENS
    as_unscored = [dict(r, quality_factor=None) if r["n_tokens"] < n else r for r in records]
    assert m["min_tokens"] == n and SelectConfig().min_tokens is None
    assert sorted(kept_ids(tmp_path / "g")) == reference_selection(as_unscored, "top-k", 0.7, "documents")
    assert m["unscored_reasons"][f"fewer than {n} scored tokens (--min-tokens)"] > 0
    assert f"short-document guard: documents scored on fewer than {n} tokens left out" in format_manifest(m)
    assert cli_main(["select", "--input-dir", str(root), "--output-dir", str(tmp_path / "off"), "--min-tokens", "0"]) == 0
    m0 = orjson.loads((tmp_path / "off" / MANIFEST_NAME).read_bytes())
    assert m0["min_tokens"] == 0 and sorted(kept_ids(tmp_path / "off")) == reference_selection(records, "top-k", 0.7, "documents")
    assert "short-document guard" not in capsys.readouterr().out
