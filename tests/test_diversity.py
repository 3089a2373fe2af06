"""Semantic diversity end to end, with the real all-MiniLM-L6-v2 (bundled, offline): the command, the
reference entry point, embedding only what the groups need, the cache (subsets, reuse, corruption),
the output lock, bad input and bad flags, torchrun, and the paper's validation on real corpora."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scalingfilter.semantic_diversity as semantic_diversity  # the reference's entry point (a module)
from scalingfilter.cli import app as cli
from scalingfilter.stages.diversity import REJECTS_FILE, RESULTS_JSON, RESULTS_TXT, DiversityConfig, run_diversity
from scalingfilter.testing import free_port, run_cli

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
FAST = ["--max-seq-length", "32", "--no-progress"]  # short inputs keep the CPU tests quick


def usable_texts(sample_texts) -> list[str]:
    """The 40 usable documents of the `corpus` fixture, in input order."""
    return [f"{t} (variant {i})" for i in range(5) for t in sample_texts]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts):
    """40 good documents in two files (one gzip), plus one of each kind of bad record."""
    d = tmp_path_factory.mktemp("div_in")
    texts = usable_texts(sample_texts)
    with open(d / "a.jsonl", "w") as f:
        for t in texts[:20]:
            f.write(json.dumps({"text": t}) + "\n")
        f.write('{"text": "   "}\n{"other": 1}\n{"text": 3}\nnot json at all\n\n')
    with gzip.open(d / "sub_b.jsonl.gz", "wt") as f:
        for t in texts[20:]:
            f.write(json.dumps({"text": t, "body": t.upper()}) + "\n")
    return d


@pytest.fixture(scope="module")
def minilm32():
    """The bundled MiniLM at a 32-token window, loaded once for the tests that embed without the command."""
    from scalingfilter.models.embedding import load_model

    return load_model(None, device="cpu", max_seq_length=32)


@pytest.fixture(scope="module")
def all_embeddings(sample_texts, minilm32):
    """Every usable document embedded at once, independently of the command: what the code did
    before it embedded only the groups' documents."""
    return minilm32.encode(usable_texts(sample_texts), batch_size=64)


def expected_scores(all_embeddings, n: int, groups: int, size: int, seed: int) -> list[float]:
    """The groups drawn from all n documents as before: a seeded permutation of range(n) cut into slices."""
    from scalingfilter.stages.vendi import vendi_score

    perm = np.random.default_rng(seed).permutation(n)
    return [vendi_score(all_embeddings[perm[i * size : (i + 1) * size]]) for i in range(groups)]


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("div_out")
    rc = cli.main(["diversity", "--input-dir", str(corpus), "--output-dir", str(out), "--groups", "3", "--group-size", "15", *FAST])
    return rc, out


def test_command_writes_reference_results_and_json(first_run, capsys):
    rc, out = first_run
    assert rc == 0
    lines = (out / RESULTS_TXT).read_text().splitlines()
    assert len(lines) == 4 and lines[2].startswith("Mean Semantic Diversity: ") and lines[3].startswith("Std Semantic Diversity: ")
    scores = [float(x) for x in lines[:2]]  # 40 documents: 2 full groups of 15
    res = json.loads((out / RESULTS_JSON).read_text())
    assert res["scores"] == scores and (res["groups"], res["group_size"]) == (2, 15)
    assert res["model"] == "sentence-transformers/all-MiniLM-L6-v2" and res["kernel"] == "reference" and res["q"] == 1.0
    assert res["seed"] == 0 and res["comparable_to_paper_n"] is False and any("not comparable" in n for n in res["notes"])
    assert res["embedding"]["dtype"] == "float32"
    assert all(1 < s < 15 for s in scores)
    assert res["documents"]["usable"] == 40 and res["documents"]["rejected"] == 4


def test_only_the_groups_documents_are_embedded_with_the_same_scores(first_run, all_embeddings):
    """2 groups of 15 out of 40: the 30 drawn documents are embedded (not 40), the cache holds those
    rows with their positions, and the scores are those of embedding all 40 and drawing the same groups."""
    _, out = first_run
    res = json.loads((out / RESULTS_JSON).read_text())
    drawn = np.sort(np.random.default_rng(0).permutation(40)[:30])
    assert res["embedding"]["encoded"] == 30 and res["embedding"]["cached_rows_used"] == 0
    assert np.array_equal(np.load(out / "embeddings.rows.npy"), drawn)
    emb = np.load(out / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (30, 384)
    assert np.allclose(emb, all_embeddings[drawn], atol=1e-5)
    ids = (out / "embeddings.ids.txt").read_text().split()
    assert ids == [f"a.jsonl:{p}" if p < 20 else f"sub_b.jsonl.gz:{p - 20}" for p in drawn]
    assert json.loads((out / "embeddings.meta.json").read_text())["rows"] == 30
    assert np.allclose(res["scores"], expected_scores(all_embeddings, 40, 2, 15, 0), rtol=1e-6, atol=0)


def test_bad_records_are_counted_and_written(first_run):
    _, out = first_run
    rejects = [json.loads(line) for line in (out / REJECTS_FILE).read_text().splitlines()]
    reasons = sorted(r["reason"].split(":")[0] for r in rejects)
    assert reasons == ["empty text", "field 'text' is a int, not a string", "malformed JSON", "record has no 'text' field"]
    assert all(r["source"] == "a.jsonl" for r in rejects)


def test_cache_reused_extended_then_refused_for_other_input_or_model(first_run, corpus, all_embeddings, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run[1], out)
    before = json.loads((out / RESULTS_JSON).read_text())
    args = ["diversity", "--input-dir", str(corpus), "--output-dir", str(out), "--groups", "3", "--group-size", "15", "--load-from-cache", *FAST]
    assert cli.main(args) == 0
    again = json.loads((out / RESULTS_JSON).read_text())
    assert again["embedding"]["from_cache"] is True and again["embedding"]["encoded"] == 0 and again["scores"] == before["scores"]
    # another seed: only the drawn documents the cache lacks are embedded; the cache keeps both sets
    assert cli.main(args + ["--seed", "1"]) == 0
    seeded = json.loads((out / RESULTS_JSON).read_text())
    drawn0, drawn1 = (set(np.random.default_rng(s).permutation(40)[:30].tolist()) for s in (0, 1))
    assert seeded["embedding"]["encoded"] == len(drawn1 - drawn0) > 0 and seeded["embedding"]["cached_rows_used"] == len(drawn1 & drawn0)
    assert np.array_equal(np.load(out / "embeddings.rows.npy"), sorted(drawn0 | drawn1))
    assert np.allclose(seeded["scores"], expected_scores(all_embeddings, 40, 2, 15, 1), rtol=1e-6, atol=0)
    capsys.readouterr()
    # another model setting: refused
    assert cli.main(args[:-3] + ["--max-seq-length", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if "error:" in line]
    assert len(error) == 1 and "another model" in error[0] and "without --load-from-cache" in error[0]
    # other input: refused
    changed = tmp_path / "in"
    changed.mkdir()
    for p in corpus.iterdir():
        (changed / p.name).write_bytes(p.read_bytes())
    with open(changed / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": "a new document"}) + "\n")
    assert cli.main(["diversity", "--input-dir", str(changed), *args[3:]]) == 2
    assert "other input" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "pickled", "meta"])
def test_corrupt_cache_is_a_one_line_error(first_run, corpus, tmp_path, capsys, damage):
    """A damaged cache is refused in one line (anything else would escape cli.main as an exception);
    an object (pickle) array is never loaded."""
    out = tmp_path / "out"
    shutil.copytree(first_run[1], out)
    if damage == "truncated":
        data = (out / "embeddings.npy").read_bytes()
        (out / "embeddings.npy").write_bytes(data[: len(data) // 2])
    elif damage == "pickled":
        np.save(out / "embeddings.rows.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    else:
        (out / "embeddings.meta.json").write_text("{not json")
    capsys.readouterr()
    rc = semantic_diversity.main(["--input_dir", str(corpus), "--output_dir", str(out), "--groups", "3", "--group_size", "15", "--load_from_cache", *FAST])
    assert rc == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error) == 1 and error[0].startswith("semantic_diversity: error: embedding cache")
    assert ("allow_pickle" in error[0]) if damage == "pickled" else ("cannot be read" in error[0])


def test_reference_entry_point_flags_and_full(corpus, tmp_path, capsys):
    """The reference's spellings; --full embeds every usable document in one pass; --load_from_cache
    without a cache computes the embeddings."""
    out = tmp_path / "out"
    rc = semantic_diversity.main(["--input_dir", str(corpus), "--output_dir", str(out), "--column", "body", "--batch_size", "8", "--full",
                                  "--load_from_cache", "--max_seq_length", "32", "--no_progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Mean Semantic Diversity:" in printed and "NOTE:" in printed
    res = json.loads((out / RESULTS_JSON).read_text())
    # only sub_b has a `body` field: a.jsonl's records are rejected, not fatal
    assert res["full"] and res["groups"] == 1 and res["group_size"] == 20 and res["text_field"] == "body"
    assert res["documents"]["rejected"] == 24 and res["embedding"]["batch_size"] == 8 and res["embedding"]["encoded"] == 20
    assert np.array_equal(np.load(out / "embeddings.rows.npy"), np.arange(20))


def test_run_diversity_returns_the_result_and_the_command_prints_it(corpus, first_run, tmp_path, capsys):
    """The API prints nothing on stdout; the command prints the reference's lines from the returned result."""
    out = tmp_path / "out"
    shutil.copytree(first_run[1], out)
    result = run_diversity(DiversityConfig(str(corpus), str(out), groups=3, group_size=15, load_from_cache=True, max_seq_length=32, progress=False))
    assert capsys.readouterr().out == ""
    assert result == json.loads((out / RESULTS_JSON).read_text())
    from scalingfilter.cli.diversity import report_lines

    lines = report_lines(result, out)
    assert lines[:4] == [f"Semantic Diversity 0: {result['scores'][0]}", f"Semantic Diversity 1: {result['scores'][1]}",
                         f"Mean Semantic Diversity: {result['mean']}", f"Std Semantic Diversity: {result['std']}"]
    assert lines[5] == f"4 of 44 records rejected (empty text: 1, record has no 'text' field: 1, field 'text' is a int, not a string: 1, malformed JSON: 1); see {out / REJECTS_FILE}"


def test_second_run_on_the_same_output_is_refused(corpus, tmp_path):
    """The output directory is held for the run: another process's run stops at once, naming the holder."""
    from scalingfilter.io.locks import JobLock

    out = tmp_path / "out"
    with JobLock(out, "diversity"):
        proc = subprocess.run(
            [sys.executable, "-m", "scalingfilter.semantic_diversity", "--input_dir", str(corpus), "--output_dir", str(out), *FAST],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )
    assert proc.returncode == 2, proc.stderr
    error = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "in use by another run" in error[0] and f"diversity pid {os.getpid()}" in error[0]
    assert "Traceback" not in proc.stderr and not (out / RESULTS_JSON).exists() and not (out / "embeddings.npy").exists()


@pytest.mark.parametrize("make_dir", ["missing", "empty"])
def test_missing_or_empty_input_dir_is_a_clear_error(tmp_path, make_dir, capsys):
    """Through the reference's entry point, in this process (its `-m` start is the lock test's, above)."""
    d = tmp_path / "in"
    if make_dir == "empty":
        d.mkdir()
    assert semantic_diversity.main(["--input-dir", str(d), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(d) in err
    assert ("does not exist" if make_dir == "missing" else "no input files") in err


def test_all_records_bad_is_a_clear_error(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "x.jsonl").write_text('{"text": ""}\nbroken\n')
    assert cli.main(["diversity", "--input-dir", str(d), "--output-dir", str(tmp_path / "o"), *FAST]) == 2
    assert "no usable documents" in capsys.readouterr().err
    assert len((tmp_path / "o" / REJECTS_FILE).read_text().splitlines()) == 2


@pytest.mark.parametrize("where", ["same", "inside"])
def test_an_output_dir_in_the_input_is_refused(tmp_path, capsys, where):
    """Its rejects.jsonl would be read back as input by the next run."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "x.jsonl").write_text('{"text": "a page"}\nbroken\n')
    out = d if where == "same" else d / "div"
    assert cli.main(["diversity", "--input-dir", str(d), "--output-dir", str(out), *FAST]) == 2
    assert "lies inside, the input directory" in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == ["x.jsonl"]  # nothing written


def test_a_causal_lm_as_the_embedding_model_is_one_line(corpus, tmp_path, capsys):
    """A scoring pair's model loads in sentence-transformers (mean pooling) but its tokenizer cannot pad a batch."""
    from scalingfilter.bundled import bundled_pair_dir

    args = ["diversity", "--input-dir", str(corpus), "--output-dir", str(tmp_path / "o"), *FAST,
            "--model-name", str(bundled_pair_dir() / "small")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "not a sentence-embedding model" in err and len(err.strip().splitlines()) == 1


def test_unreachable_hub_model_says_how_to_use_a_local_dir(monkeypatch):
    import sentence_transformers

    from scalingfilter import errors
    from scalingfilter.models.embedding import ModelLoadError, load_model

    assert ModelLoadError is errors.ModelLoadError

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", offline)
    with pytest.raises(ModelLoadError) as err:
        load_model("BAAI/bge-base-en-v1.5", device="cpu")
    assert "model_name=./bge-base-en-v1.5" in str(err.value) and "huggingface-cli download" in str(err.value)
    assert "--model-name=./bge-base-en-v1.5" in err.value.cli_message()
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_model("./no/such/model", device="cpu")


@pytest.mark.slow
def test_torchrun_two_processes_match_one(corpus, tmp_path):
    """Two CPU processes under torchrun, units of 4 documents shared out: the same rows, cache and scores as one
    process, byte for byte (each unit is the same chunk of texts whichever process embeds it)."""
    import torch

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", SCALINGFILTER_DIVERSITY_CHUNK="4")
    args = ["--input_dir", str(corpus), "--groups", "3", "--group_size", "15", "--device", "cpu", *FAST]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's processes (OMP_NUM_THREADS=1): the same kernels, so the same bytes
    try:  # the one process: this one (the reference's flags through the same parser)
        one = run_cli(["diversity", *args, "--output_dir", str(tmp_path / "one")], env={"SCALINGFILTER_DIVERSITY_CHUNK": "4"})
    finally:
        torch.set_num_threads(threads)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                          "-m", "scalingfilter.semantic_diversity", *args, "--output_dir", str(tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("Mean Semantic Diversity:") == 1  # rank 0 alone prints
    a, b = (json.loads((tmp_path / d / RESULTS_JSON).read_text()) for d in ("one", "two"))
    assert a["scores"] == b["scores"] and a["documents"] == b["documents"]
    assert (a["embedding"]["engine"], b["embedding"]["engine"]) == ({"name": "local", "units": 8, "processes": 1}, {"name": "local", "units": 8, "processes": 2})
    for name in ("embeddings.ids.txt", "embeddings.rows.npy", "embeddings.npy", "embeddings.meta.json", RESULTS_TXT):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert not (tmp_path / "two" / ".embedding_parts").exists()


def assert_mixing_more_sources_raises_diversity(model, sources: list[list[str]]):
    """At a fixed number of documents, mixtures of more sources score higher: each source gives 60 documents
    (first 300 characters, 32 tokens, to keep it quick); a k-source mixture takes 60 / k documents from each (60
    is divisible by 1..6, so every mixture has n = 60). Single sources differ a lot, so the score of k sources is
    averaged over every k-subset; that average must rise strictly with k."""
    from scalingfilter.stages.vendi import vendi_score

    per_source = 60
    assert len(sources) == 6 and all(len(texts) == per_source for texts in sources)
    emb = [model.encode([t[:300] for t in texts], batch_size=32) for texts in sources]
    means = []
    for k in range(1, len(sources) + 1):
        take = per_source // k
        assert take * k == per_source
        means.append(np.mean([vendi_score(np.concatenate([emb[i][:take] for i in subset])) for subset in itertools.combinations(range(len(sources)), k)]))
    assert all(b > a for a, b in zip(means, means[1:])), means


def first_texts(path, n: int, source: str | None = None) -> list[str]:
    """The first n non-blank texts of a JSONL.gz file (of one source where given)."""
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["text"].strip() and source in (None, record.get("source")):
                texts.append(record["text"])
            if len(texts) == n:
                break
    return texts


REAL_SOURCES = ["corpora/train/wikitext.jsonl.gz", "corpora/train/speeches.jsonl.gz", "corpora/train/tinyshakespeare.jsonl.gz",
                "corpora/train/gutenberg.jsonl.gz", "corpora/eval/dclm-human-dev.jsonl.gz", "corpora/eval/cleaneval-pairs.jsonl.gz"]


@pytest.mark.needs_shared(*REAL_SOURCES)
def test_mixing_more_sources_raises_diversity(shared, minilm32):
    """The paper's validation on six real sources (../shared/corpora: developers and CI). A set of encyclopaedia
    articles on unrelated topics is more diverse than a mixture of two novels, hence the average over subsets."""
    assert_mixing_more_sources_raises_diversity(minilm32, [first_texts(shared(f), 60) for f in REAL_SOURCES])


def test_mixing_more_generated_sources_raises_diversity(minilm32):
    """The same validation on six generated sources of one genre each (tests/data/sources.jsonl.gz: every clone)."""
    names = ["weather", "recipes", "football", "code", "legal", "markets"]
    assert_mixing_more_sources_raises_diversity(minilm32, [first_texts(DATA / "sources.jsonl.gz", 60, name) for name in names])


@pytest.mark.parametrize("bad", [["--q", "-1"], ["--q", "x"], ["--group-size", "0"], ["--group_size", "0"], ["--groups", "0"],
                                 ["--batch-size", "0"], ["--batch_size", "-3"], ["--max-seq-length", "0"], ["--seed", "-1"],
                                 ["--group-size", str(2**63)], ["--seed", "99999999999999999999999"]])  # beyond what JSON state holds
def test_bad_options_are_refused_while_parsing(corpus, tmp_path, capsys, bad):
    base = ["diversity", "--input-dir", str(corpus), "--output-dir", str(tmp_path / "o"), *FAST]
    with pytest.raises(SystemExit) as exc:
        cli.main(base + bad)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert bad[0] in err and ("must be" in err or "not" in err)
    assert not (tmp_path / "o").exists()  # refused before any work
