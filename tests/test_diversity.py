"""Semantic diversity end to end, with the real all-MiniLM-L6-v2 (bundled, offline): the command, the
reference entry point, the cache, bad input, and the paper's validation on real corpora."""

from __future__ import annotations

import gzip
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scalingfilter import cli, semantic_diversity
from scalingfilter.diversity import REJECTS_FILE, RESULTS_JSON, RESULTS_TXT

CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"
FAST = ["--max-seq-length", "32", "--no-progress"]  # short inputs keep the CPU tests quick


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts):
    """40 good documents in two files (one gzip), plus one of each kind of bad record."""
    d = tmp_path_factory.mktemp("div_in")
    texts = [f"{t} (variant {i})" for i in range(5) for t in sample_texts]
    with open(d / "a.jsonl", "w") as f:
        for t in texts[:20]:
            f.write(json.dumps({"text": t}) + "\n")
        f.write('{"text": "   "}\n{"other": 1}\n{"text": 3}\nnot json at all\n\n')
    with gzip.open(d / "sub_b.jsonl.gz", "wt") as f:
        for t in texts[20:]:
            f.write(json.dumps({"text": t, "body": t.upper()}) + "\n")
    return d


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("div_out")
    rc = cli.main(["diversity", "--input-dir", str(corpus), "--output-dir", str(out), "--groups", "3", "--group-size", "15", *FAST])
    return rc, out


def test_command_writes_reference_results_and_json(first_run):
    rc, out = first_run
    assert rc == 0
    lines = (out / RESULTS_TXT).read_text().splitlines()
    assert len(lines) == 4 and lines[2].startswith("Mean Semantic Diversity: ") and lines[3].startswith("Std Semantic Diversity: ")
    scores = [float(x) for x in lines[:2]]  # 40 documents: 2 full groups of 15
    res = json.loads((out / RESULTS_JSON).read_text())
    assert res["scores"] == scores and (res["groups"], res["group_size"]) == (2, 15)
    assert res["model"] == "sentence-transformers/all-MiniLM-L6-v2" and res["kernel"] == "reference" and res["q"] == 1.0
    assert res["seed"] == 0 and res["comparable_to_paper_n"] is False and any("not comparable" in n for n in res["notes"])
    assert all(1 < s < 15 for s in scores)
    assert res["documents"]["usable"] == 40 and res["documents"]["rejected"] == 4
    emb = np.load(out / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (40, 384)
    ids = (out / "embeddings.ids.txt").read_text().split()
    assert ids[0] == "a.jsonl:0" and ids[-1] == "sub_b.jsonl.gz:19"


def test_bad_records_are_counted_and_written(first_run):
    _, out = first_run
    rejects = [json.loads(line) for line in (out / REJECTS_FILE).read_text().splitlines()]
    reasons = sorted(r["reason"].split(":")[0] for r in rejects)
    assert reasons == ["empty text", "field 'text' is a int, not a string", "malformed JSON", "record has no 'text' field"]
    assert all(r["source"] == "a.jsonl" for r in rejects)


def test_cache_reused_then_refused_for_other_input_or_model(first_run, corpus, tmp_path, capsys):
    _, out = first_run
    before = json.loads((out / RESULTS_JSON).read_text())
    args = ["diversity", "--input-dir", str(corpus), "--output-dir", str(out), "--groups", "3", "--group-size", "15", "--load-from-cache", *FAST]
    assert cli.main(args) == 0
    again = json.loads((out / RESULTS_JSON).read_text())
    assert again["embedding"]["from_cache"] is True and again["scores"] == before["scores"]
    # another model setting: refused
    assert cli.main(args[:-3] + ["--max-seq-length", "16", "--no-progress"]) == 2
    assert "another model" in capsys.readouterr().err
    # other input: refused
    changed = tmp_path / "in"
    changed.mkdir()
    for p in corpus.iterdir():
        (changed / p.name).write_bytes(p.read_bytes())
    with open(changed / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": "a new document"}) + "\n")
    assert cli.main(["diversity", "--input-dir", str(changed), *args[3:]]) == 2
    assert "other input" in capsys.readouterr().err


def test_reference_entry_point_flags_and_full(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    rc = semantic_diversity.main(["--input_dir", str(corpus), "--output_dir", str(out), "--column", "body", "--batch_size", "8", "--full", *FAST])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Mean Semantic Diversity:" in printed and "NOTE:" in printed
    res = json.loads((out / RESULTS_JSON).read_text())
    # only sub_b has a `body` field: a.jsonl's records are rejected, not fatal
    assert res["full"] and res["groups"] == 1 and res["group_size"] == 20 and res["text_field"] == "body"
    assert res["documents"]["rejected"] == 24 and res["embedding"]["batch_size"] == 8


@pytest.mark.parametrize("make_dir", ["missing", "empty"])
def test_missing_or_empty_input_dir_is_a_clear_error(tmp_path, make_dir):
    d = tmp_path / "in"
    if make_dir == "empty":
        d.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "scalingfilter.semantic_diversity", "--input-dir", str(d), "--output-dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(d) in proc.stderr
    assert ("does not exist" if make_dir == "missing" else "no input files") in proc.stderr


def test_all_records_bad_is_a_clear_error(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "x.jsonl").write_text('{"text": ""}\nbroken\n')
    assert cli.main(["diversity", "--input-dir", str(d), "--output-dir", str(tmp_path / "o"), *FAST]) == 2
    assert "no usable documents" in capsys.readouterr().err
    assert len((tmp_path / "o" / REJECTS_FILE).read_text().splitlines()) == 2


def test_unreachable_hub_model_says_how_to_use_a_local_dir(monkeypatch):
    import sentence_transformers

    from scalingfilter.embedding import ModelLoadError, load_model

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", offline)
    with pytest.raises(ModelLoadError) as err:
        load_model("BAAI/bge-base-en-v1.5", device="cpu")
    assert "--model-name ./bge-base-en-v1.5" in str(err.value) and "huggingface-cli download" in str(err.value)
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_model("./no/such/model", device="cpu")


@pytest.mark.skipif(not (CORPORA / "train").is_dir(), reason="../shared/corpora not present")
def test_mixing_more_sources_raises_diversity():
    """The paper's validation: at a fixed number of documents, mixtures of more sources score higher.

    Six real sources, 60 documents each (first 300 characters, 32 tokens, to keep it quick); a k-source
    mixture takes 60 / k documents from each (60 is divisible by 1..6, so every mixture has n = 60). Single sources differ a lot (a set of encyclopaedia articles on unrelated
    topics is more diverse than a mixture of two novels), so the score of k sources is averaged over
    every k-subset; that average must rise strictly with k."""
    from scalingfilter.embedding import load_model
    from scalingfilter.vendi import vendi_score

    files = ["train/wikitext", "train/speeches", "train/tinyshakespeare", "train/gutenberg", "eval/dclm-human-dev", "eval/cleaneval-pairs"]
    per_source = 60
    model = load_model(None, device="cpu", max_seq_length=32)
    emb = []
    for f in files:
        texts = []
        with gzip.open(CORPORA / f"{f}.jsonl.gz", "rt") as fh:
            for line in fh:
                t = json.loads(line)["text"]
                if t.strip():
                    texts.append(t[:300])
                if len(texts) == per_source:
                    break
        emb.append(model.encode(texts, batch_size=32))
    means = []
    for k in range(1, len(files) + 1):
        take = per_source // k
        assert take * k == per_source
        means.append(np.mean([vendi_score(np.concatenate([emb[i][:take] for i in subset])) for subset in itertools.combinations(range(len(files)), k)]))
    assert all(b > a for a, b in zip(means, means[1:])), means


def test_bad_options_are_clear_errors(corpus, tmp_path, capsys):
    base = ["diversity", "--input-dir", str(corpus), "--output-dir", str(tmp_path / "o"), *FAST]
    assert cli.main(base + ["--q", "-1"]) == 2
    assert "--q" in capsys.readouterr().err
    assert cli.main(base + ["--group-size", "0"]) == 2
    assert ">= 1" in capsys.readouterr().err
