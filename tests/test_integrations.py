"""The integrations (datatrove, Ray Data, Hugging Face datasets) give the numbers of `scalingfilter score`.

One corpus for the module: 200 generated texts (short and long, some too short to score, some truncated) in 4
JSONL files of 50 documents, scored once by the CLI (in-process, on the CPU). The score job scores each file as
one window (50 documents tokenised, sorted by length, batched together); an adapter that groups the documents
the same way must give the same bits, one that groups them otherwise the same numbers within float32 noise:

on the CPU a document's loss depends, in its last bits, on the batch it shares the forward pass with (the padded
length and the number of rows change the matmul's blocking). Measured on this corpus: datatrove's default windows
(a task's two files in one window) change 7 of 200 documents, batches of 32 in datasets.map 1 of 200, by at most
~5e-9 relative on a loss and ~3e-8 on a quality factor. Those cases are held to rel 1e-6 (n_tokens, truncated and
score_error exactly); the aligned ones (datatrove's per_file_windows, Ray Data and datasets.map in batches of one
file) to exact equality.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from scalingfilter.cli.app import main as cli_main
from scalingfilter.integrations.datatrove import QualityFactorAnnotator, QualityFactorFilter  # imports without datatrove

N_FILES, PER_FILE = 4, 50
NUMBERS = ("small_loss", "large_loss", "small_ppl", "large_ppl", "quality_factor")
EXACT = ("n_tokens", "truncated", "score_error")
TOO_SHORT_AT = (70, 120, 199)  # none in the first file (the first batch of an aligned datasets.map)

WORDS = ("the of and a to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up other "
         "about out many then them these so some her would make like him into time has look two more write go see "
         "number no way could people my than first water been call who oil its now find long down day did get come "
         "made may part Über café naïve 日本語 1984 3.14 $5 e-mail http://example.com/x?y=1").split()


def make_texts(n: int = N_FILES * PER_FILE, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        if i in TOO_SHORT_AT:
            texts.append(rng.choice(["a", "!", "x"]))  # one token: too short to score
            continue
        kind = i % 10
        length = rng.randint(110, 150) if kind == 9 else rng.randint(2, 30)  # kind 9: over max_len (256 tokens)
        words = [rng.choice(WORDS) for _ in range(length)]
        if kind in (3, 7):
            words.insert(rng.randrange(len(words)), "\n\n")
        text = " ".join(words)
        texts.append(text[0].upper() + text[1:] + rng.choice([".", "!", "?", "", " ..."]))
    return texts


def read_jsonl_dir(directory: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(directory.rglob("*.jsonl")) for line in p.read_text(encoding="utf-8").splitlines()]


def _number(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def compare_scores(got: dict[str, dict], ref: dict[str, dict], exact: bool) -> int:
    """Asserts `got` (id -> score fields) matches the CLI's; returns how many documents differ in any bit."""
    assert sorted(got) == sorted(ref)
    differing = 0
    for key, r in ref.items():
        g = got[key]
        for f in EXACT:
            assert g[f] == r[f], (key, f, g[f], r[f])
        values = [(_number(g[f]), r[f]) for f in NUMBERS]
        for (gv, rv), f in zip(values, NUMBERS):
            if rv is None:
                assert gv is None, (key, f, gv)
            elif exact:
                assert gv == rv, (key, f, gv, rv)
            else:
                assert gv == pytest.approx(rv, rel=1e-6), (key, f, gv, rv)
        differing += any(gv != rv for gv, rv in values)
    return differing


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_pair_dir):
    """The corpus files and the CLI's scores of them (id -> score fields)."""
    root = tmp_path_factory.mktemp("integrations")
    texts = make_texts()
    ids = [f"d{i:03d}" for i in range(len(texts))]
    in_dir = root / "in"
    in_dir.mkdir()
    for f in range(N_FILES):
        rows = range(f * PER_FILE, (f + 1) * PER_FILE)
        (in_dir / f"part{f}.jsonl").write_text("".join(json.dumps({"id": ids[i], "text": texts[i]}) + "\n" for i in rows), encoding="utf-8")
    out = root / "cli"
    assert cli_main(["score", "--input-dir", str(in_dir), "--output-dir", str(out), "--pair", str(tiny_pair_dir),
                     "--device", "cpu", "--no-progress"]) == 0
    ref = {r["id"]: {f: r[f] for f in NUMBERS + EXACT} for r in read_jsonl_dir(out)}
    assert len(ref) == len(texts)
    assert sum(r["score_error"] is not None for r in ref.values()) == len(TOO_SHORT_AT)
    assert any(r["truncated"] for r in ref.values())
    return SimpleNamespace(root=root, in_dir=in_dir, texts=texts, ids=ids, ref=ref, pair=str(tiny_pair_dir))


# ---------------------------------------------------------------------------------------------
# datatrove

# CI installs the dev extra (datatrove included): there a missing datatrove fails here instead of skipping
HAVE_DATATROVE = importlib.util.find_spec("datatrove") is not None or bool(os.environ.get("CI"))
needs_datatrove = pytest.mark.skipif(not HAVE_DATATROVE, reason="pip install 'scalingfilter[datatrove]'")
if HAVE_DATATROVE:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter


def datatrove_scores(out_dir: Path) -> dict[str, dict]:
    docs = read_jsonl_dir(out_dir)
    scores = {d["id"]: {f: d["metadata"][f] for f in NUMBERS + EXACT} for d in docs}
    assert len(scores) == len(docs), "a document written twice"
    return scores


def step_stats(logging_dir: Path, name: str) -> dict[str, float]:
    """The totals of a step's stats (datatrove saves a plain count as a number, a measure as a dict)."""
    steps = json.loads((logging_dir / "stats.json").read_text())
    stats = next(s["stats"] for s in steps if s["name"].endswith(name))
    return {k: v["total"] if isinstance(v, dict) else v for k, v in stats.items()}


def run_pipeline(steps: list, logs: Path, tasks: int = 2) -> None:
    LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=str(logs)).run()


@pytest.fixture(scope="module")
def annotated(corpus):
    """The corpus through JsonlReader -> QualityFactorAnnotator(per_file_windows=True) -> JsonlWriter, 2 tasks."""
    out, logs = corpus.root / "annotated", corpus.root / "annotated-logs"
    run_pipeline([JsonlReader(str(corpus.in_dir)), QualityFactorAnnotator(corpus.pair, device="cpu", per_file_windows=True),
                  JsonlWriter(str(out), compression=None)], logs)
    return SimpleNamespace(out=out, logs=logs)


@needs_datatrove
def test_datatrove_annotator_equals_cli(corpus, annotated, tmp_path):
    # per_file_windows: each file is one window, as in the score job: the same batches, the same bits
    compare_scores(datatrove_scores(annotated.out), corpus.ref, exact=True)
    stats = step_stats(annotated.logs, QualityFactorAnnotator.name)
    assert stats["total"] == len(corpus.texts)
    assert stats["score_errors"] == len(TOO_SHORT_AT)
    assert stats["scored"] == len(corpus.texts) - len(TOO_SHORT_AT)
    assert stats["tokens"] == sum(r["n_tokens"] for r in corpus.ref.values() if r["score_error"] is None)

    # by default a task's two files share a window (other batches): float32 noise, held to rel 1e-6 (module docstring)
    run_pipeline([JsonlReader(str(corpus.in_dir)), QualityFactorAnnotator(corpus.pair, device="cpu"),
                  JsonlWriter(str(tmp_path / "out"), compression=None)], tmp_path / "logs")
    differing = compare_scores(datatrove_scores(tmp_path / "out"), corpus.ref, exact=False)
    print(f"datatrove, windows across files: {differing} of {len(corpus.texts)} documents differ in some bit")


@needs_datatrove
def test_datatrove_interrupted_run_is_completed_by_a_rerun(corpus, tmp_path):
    class CrashOnce(PipelineStep):
        """Raises at task `rank`'s `at_doc`-th document the first time (a marker file remembers it); logs each start."""

        name = "💥 crash once"
        type = "🧪 - TEST"

        def __init__(self, marker: Path, starts: Path, rank: int = 1, at_doc: int = 40):
            super().__init__()
            self.marker, self.starts, self.rank, self.at_doc = str(marker), str(starts), rank, at_doc

        def run(self, data, rank: int = 0, world_size: int = 1):
            with open(self.starts, "a") as fh:
                fh.write(f"{rank}\n")
            for i, doc in enumerate(data):
                if rank == self.rank and i == self.at_doc and not Path(self.marker).exists():
                    Path(self.marker).touch()
                    raise RuntimeError("simulated crash")
                yield doc

    out, logs, starts = tmp_path / "out", tmp_path / "logs", tmp_path / "starts"

    def executor():
        return LocalPipelineExecutor([
            JsonlReader(str(corpus.in_dir)),
            QualityFactorAnnotator(corpus.pair, device="cpu", per_file_windows=True),
            CrashOnce(tmp_path / "crashed", starts),
            JsonlWriter(str(out), compression=None),
        ], tasks=2, workers=1, logging_dir=str(logs))

    with pytest.raises(RuntimeError, match="simulated crash"):
        executor().run()
    assert (logs / "completions" / "00000").exists() and not (logs / "completions" / "00001").exists()
    assert len((out / "00001.jsonl").read_text().splitlines()) < PER_FILE * 2  # task 1 stopped part-way

    executor().run()
    assert starts.read_text().split() == ["0", "1", "1"]  # the rerun skipped the finished task 0
    assert (logs / "completions" / "00001").exists()
    compare_scores(datatrove_scores(out), corpus.ref, exact=True)  # every document once, the CLI's bits


@needs_datatrove
def test_datatrove_filter_keeps_exactly_the_documents_at_or_above_the_threshold(corpus, annotated, tmp_path):
    ref = corpus.ref
    scored = sorted(r["quality_factor"] for r in ref.values() if r["quality_factor"] is not None)
    threshold = scored[len(scored) // 2]  # a document's own value: kept (>=)
    kept, dropped, logs = tmp_path / "kept", tmp_path / "dropped", tmp_path / "logs"
    run_pipeline([  # the annotated files read back: the score fields are in each document's metadata again
        JsonlReader(str(annotated.out)),
        QualityFactorFilter(threshold, exclusion_writer=JsonlWriter(str(dropped), compression=None), min_tokens=0),
        JsonlWriter(str(kept), compression=None),
    ], logs, tasks=1)

    want = {k for k, r in ref.items() if r["quality_factor"] is not None and r["quality_factor"] >= threshold}
    assert sorted(d["id"] for d in read_jsonl_dir(kept)) == sorted(want)
    reasons = {d["id"]: d["metadata"]["filter_reason"] for d in read_jsonl_dir(dropped)}
    assert sorted(reasons) == sorted(set(ref) - want)
    assert sorted(k for k, why in reasons.items() if why == "unscored") == sorted(k for k, r in ref.items() if r["score_error"])
    stats = step_stats(logs, QualityFactorFilter.name)
    assert stats["forwarded"] == len(want)
    assert stats["dropped_unscored"] == len(TOO_SHORT_AT)
    assert stats["dropped_below_threshold"] == len(ref) - len(want) - len(TOO_SHORT_AT)


@needs_datatrove
def test_datatrove_steps_need_no_model_to_be_built_or_copied(corpus):
    import copy

    step = QualityFactorAnnotator(corpus.pair, device="cpu")
    assert step._scorer is None  # loaded in the task, not here
    step.scorer  # noqa: B018 (loads)
    clone = pickle.loads(pickle.dumps(step))
    assert clone._scorer is None and copy.deepcopy(step)._scorer is None and clone.scorer_kwargs == step.scorer_kwargs
    for bad in ("1.0", float("nan"), None, True):
        with pytest.raises(Exception, match="threshold"):
            QualityFactorFilter(bad)


@needs_datatrove
def test_datatrove_filter_short_document_guard_is_on_by_default():
    """Issue 20 (27): the filter drops a document scored on fewer than DEFAULT_MIN_TOKENS tokens (metadata n_tokens)
    by default, as select leaves it out; min_tokens=0 turns it off; for qf_distilled (no token count) it is off and
    asking for it is refused."""
    from datatrove.data import Document

    from scalingfilter.stages.select_config import DEFAULT_MIN_TOKENS

    def doc(qf, n_tokens, **more):
        return Document(text="t", id="d", metadata={"quality_factor": qf, "n_tokens": n_tokens, "score_error": None, **more})

    step = QualityFactorFilter(1.0)
    assert step.min_tokens == DEFAULT_MIN_TOKENS > 2
    assert step.filter(doc(4.52, 2)) == (False, "short")  # the pool's 2-token `/*`, the highest quality factor
    assert step.filter(doc(4.52, DEFAULT_MIN_TOKENS)) is True and step.filter(doc(0.5, 300)) == (False, "below_threshold")
    assert step.filter(Document(text="t", id="d", metadata={"quality_factor": 2.0})) == (False, "no_token_count")
    off = QualityFactorFilter(1.0, min_tokens=0)
    assert off.filter(doc(4.52, 2)) is True and off.filter(Document(text="t", id="d", metadata={"quality_factor": 2.0})) is True
    assert QualityFactorFilter(1.0, min_tokens=4).filter(doc(4.52, 3)) == (False, "short")
    distilled = QualityFactorFilter(0.5, field="qf_distilled")
    assert distilled.min_tokens == 0 and distilled.filter(Document(text="t", id="d", metadata={"qf_distilled": 0.9})) is True
    with pytest.raises(Exception, match="min_tokens=16 does not apply to field='qf_distilled'"):
        QualityFactorFilter(0.5, field="qf_distilled", min_tokens=16)
    for bad in (-1, 1.5, True):
        with pytest.raises(Exception, match="min_tokens"):
            QualityFactorFilter(1.0, min_tokens=bad)


def test_datatrove_missing_is_the_one_line_error_with_its_pip_command():
    code = (
        "import sys\n"
        "sys.modules['datatrove'] = None\n"
        "from scalingfilter.errors import MissingExtraError\n"
        "from scalingfilter.integrations.datatrove import QualityFactorAnnotator, QualityFactorFilter\n"
        "for make in (lambda: QualityFactorAnnotator(pair='bundled'), lambda: QualityFactorFilter(threshold=1.0)):\n"
        "    try:\n"
        "        make()\n"
        "    except MissingExtraError as exc:\n"
        "        print(exc)\n"
        "    else:\n"
        "        print('constructed')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    for line, cls in zip(lines, ("QualityFactorAnnotator", "QualityFactorFilter")):
        assert line.startswith(cls) and "pip install 'scalingfilter[datatrove]'" in line, line


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


def test_datasets_map_equals_cli(corpus):
    datasets = pytest.importorskip("datasets")
    from datasets.fingerprint import Hasher

    from scalingfilter.integrations.datasets import map_function
    from scalingfilter.models.scorer import QualityScorer

    ds = datasets.Dataset.from_dict({"id": corpus.ids, "text": corpus.texts})
    # batches of 50 hold the documents of one file: the CLI's windows, the same bits (the first batch has no
    # score_error: the column must still be typed string for the later batches that have one)
    fn = map_function(text_column="text", pair=corpus.pair, device="cpu")
    out = ds.map(fn, batched=True, batch_size=PER_FILE)
    assert out.features["score_error"].dtype == "string" and out.features["quality_factor"].dtype == "float64"
    assert out.column_names == ["id", "text", "small_loss", "large_loss", "small_ppl", "large_ppl", "quality_factor",
                                "n_tokens", "truncated", "score_error"]
    compare_scores({r["id"]: r for r in out}, corpus.ref, exact=True)

    # other batches: other forward-pass batches, float32 noise (module docstring)
    scorer = QualityScorer.from_pretrained(corpus.pair, device="cpu")
    method_fn = scorer.map_function(text_column="text")
    differing = compare_scores({r["id"]: r for r in ds.map(method_fn, batched=True, batch_size=32)}, corpus.ref, exact=False)
    print(f"datasets, batches of 32: {differing} of {len(corpus.texts)} documents differ in some bit")

    # a first batch with nothing to score: the number columns come as NaN there, typed float64, and map goes on
    short = datasets.Dataset.from_dict({"text": ["a", "!"] + corpus.texts[:4]}).map(method_fn, batched=True, batch_size=2)
    assert short.features["quality_factor"].dtype == "float64" and short.features["score_error"].dtype == "string"
    assert all(math.isnan(q) for q in short["quality_factor"][:2]) and None not in short["quality_factor"][2:]
    assert short["score_error"][2:] == [None] * 4

    # pickling (the fingerprint, num_proc workers) carries settings, not models; the copy loads the same pair
    assert len(pickle.dumps(method_fn)) < 4096
    assert Hasher.hash(method_fn) == Hasher.hash(pickle.loads(pickle.dumps(method_fn))) != Hasher.hash(scorer.map_function())
    batch = {"text": corpus.texts[:PER_FILE]}
    assert pickle.loads(pickle.dumps(method_fn))(batch)["quality_factor"] == method_fn(batch)["quality_factor"]
    with pytest.raises(Exception, match="batched=True"):
        method_fn({"text": "one example"})


# ---------------------------------------------------------------------------------------------
# Ray Data


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    """The session's local Ray instance (conftest.ray_cluster)."""
    return ray_cluster


def test_ray_data_map_batches_equals_cli(corpus, ray_local):
    from scalingfilter.integrations.ray_data import QualityFactorMapper

    items = [{"id": i, "text": t} for i, t in zip(corpus.ids, corpus.texts)]
    # blocks and batches of 50 rows hold the documents of one file: the CLI's windows, the same bits. One batch
    # format through Ray Data: the mapper on numpy, pandas and arrow batches is the next test's
    ds = ray_local.data.from_items(items, override_num_blocks=N_FILES).map_batches(
        QualityFactorMapper, fn_constructor_kwargs={"text_column": "text", "pair": corpus.pair, "device": "cpu"},
        batch_format="pyarrow", batch_size=PER_FILE, concurrency=1)
    rows = ds.take_all()
    assert len(rows) == len(items)
    compare_scores({r["id"]: r for r in rows}, corpus.ref, exact=True)


def test_ray_data_mapper_takes_numpy_pandas_and_arrow_batches(corpus):
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from scalingfilter.integrations.ray_data import SCORE_COLUMNS, QualityFactorMapper

    mapper = QualityFactorMapper(text_column="body", pair=corpus.pair, device="cpu")
    ids, texts = corpus.ids[:PER_FILE], corpus.texts[:PER_FILE]
    ref = {k: corpus.ref[k] for k in ids}
    out = mapper({"id": np.array(ids), "body": np.array(texts)})
    assert out["quality_factor"].dtype == np.float64 and out["n_tokens"].dtype == np.int64
    compare_scores({k: {f: out[f][j] for f in SCORE_COLUMNS} for j, k in enumerate(ids)}, ref, exact=True)

    frame = mapper(pd.DataFrame({"id": ids, "body": texts, "quality_factor": 0.0}))  # an old column is replaced
    assert list(frame.columns) == ["id", "body", "quality_factor"] + [c for c in SCORE_COLUMNS if c != "quality_factor"]
    compare_scores({r["id"]: r for r in frame.to_dict("records")}, ref, exact=True)

    table = mapper(pa.table({"id": ids, "body": [None, "a"] + texts[2:]}))  # null text, too short: no numbers
    assert table.schema.field("score_error").type == pa.string() and table.schema.field("truncated").type == pa.bool_()
    rows = table.to_pylist()
    assert rows[0]["score_error"] == "no text (not a string)" and rows[1]["score_error"].startswith("too short")
    assert rows[0]["quality_factor"] is None and rows[1]["quality_factor"] is None
    with pytest.raises(KeyError, match="text_column"):
        mapper({"text": np.array(["x y z"])})
