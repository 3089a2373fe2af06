"""The library: `QualityScorer` gives exactly the numbers `scalingfilter score` writes (one code path, the
same settings resolved), the public API imports no torch until a model is used, and its errors name
parameters where the CLI names flags.

The equality tests run on generated texts that every clone has and, where ../shared is present (always in
CI), on real web pages of the pool too."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from scalingfilter.cli.app import main as cli_main
from scalingfilter.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
SCORE_FIELDS = ("small_loss", "large_loss", "small_ppl", "large_ppl", "quality_factor", "n_tokens", "truncated", "score_error")

WORDS = ("the of and to in is was for on that with as by at from data model text page home about contact "
         "language quality filter corpus token scaling perplexity larger smaller web crawl news article "
         "über café naïve façade 日本語 テキスト 1 2 3 42 2024 $ % & ( ) ; : , . ! ? — … \" '").split()


def generated_texts(n: int, seed: int = 0) -> list[str]:
    """Varied documents: empty, one word, prose, lists, code, long pages past any max_len, unicode."""
    rng = random.Random(seed)
    texts = ["", "a", "Home", "def add(a, b):\n    return a + b\n", "x " * 3000]
    while len(texts) < n:
        kind = rng.random()
        length = int(rng.expovariate(1 / 40)) + 1
        words = [rng.choice(WORDS) for _ in range(length)]
        if kind < 0.15:
            texts.append(" | ".join(words[:20]))
        elif kind < 0.3:
            texts.append("\n".join(" ".join(words[i:i + 7]) for i in range(0, len(words), 7)))
        else:
            texts.append(" ".join(words).capitalize() + ".")
    return texts


def real_pages(path: Path, n: int) -> list[str]:
    """The first n pages of the pool's raw web pages."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line).get("text")
            if isinstance(text, str):
                out.append(text)
            if len(out) == n:
                break
    return out


def cli_scores(tmp_path: Path, texts: list[str], *flags: str) -> tuple[list[dict], dict]:
    """The score fields `scalingfilter score` writes for texts (one JSONL file, in order), and its summary."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(parents=True)
    with open(inp / "docs.jsonl", "w", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": i, "text": t}) + "\n")
    assert cli_main(["score", "--input-dir", str(inp), "--output-dir", str(out), "--no-progress", *flags]) == 0
    records = [json.loads(line) for line in open(out / "docs.jsonl", encoding="utf-8")]
    assert [r["id"] for r in records] == list(range(len(texts)))
    return records, json.loads((out / "summary.json").read_text())


def assert_identical(lib_scores, records) -> int:
    assert len(lib_scores) == len(records)
    for score, rec in zip(lib_scores, records):
        got = score.to_dict()
        for f in SCORE_FIELDS:
            assert got[f] == rec[f], (f, got[f], rec[f])  # exactly: the same floats, bit for bit
    return len(records)


@pytest.fixture(scope="module")
def bundled_scorer():
    from scalingfilter import QualityScorer

    return QualityScorer.from_pretrained("bundled")


@pytest.mark.parametrize("corpus", ["generated", "pool"])
def test_bundled_pair_scores_exactly_as_the_cli(tmp_path, bundled_scorer, shared, corpus):
    """40 generated texts (every clone has them; the edge cases are the first five); 12 real web pages of the pool where ../shared is (always in
    CI: conftest.shared_path skips without it, fails in CI without it)."""
    if corpus == "pool":
        texts = real_pages(shared("corpora", "pool", "rawpages.jsonl.gz"), 12) + generated_texts(5)
    else:
        texts = generated_texts(40)
    records, summary = cli_scores(tmp_path, texts, "--pair", "bundled")
    recorded = bundled_scorer.settings.recorded()
    assert recorded == {k: summary["settings"][k] for k in recorded}
    # the pair's scoring.json is resolved in the scorer: 512 tokens with a BOS token, as the CLI scores them
    assert (bundled_scorer.settings.max_len, bundled_scorer.settings.prepend_bos) == (512, True)
    assert_identical(bundled_scorer.score(texts), records)
    assert any(r["truncated"] for r in records) and any(r["score_error"] for r in records)  # the edge cases were there


def test_random_pair_without_scoring_json_defaults_and_overrides(tmp_path, tiny_pair_dir):
    from scalingfilter import QualityScorer

    assert not (tiny_pair_dir / "scoring.json").exists()
    texts = generated_texts(200, seed=1)
    default = QualityScorer.from_pretrained(str(tiny_pair_dir))
    # no scoring.json: min(1024, the models' context of 256), no BOS
    assert (default.settings.max_len, default.settings.prepend_bos) == (256, False)
    records, summary = cli_scores(tmp_path / "a", texts, "--pair", str(tiny_pair_dir))
    recorded = default.settings.recorded()
    assert recorded == {k: summary["settings"][k] for k in recorded}
    assert_identical(default.score(texts), records)

    overridden = QualityScorer.from_pretrained(str(tiny_pair_dir), max_len=32, prepend_bos=True, max_tokens_per_batch=512)
    assert (overridden.settings.max_len, overridden.settings.prepend_bos, overridden.settings.max_tokens_per_batch) == (32, True, 512)
    records, _ = cli_scores(tmp_path / "b", texts, "--pair", str(tiny_pair_dir), "--max-len", "32", "--prepend-bos",
                            "--max-tokens-per-batch", "512")
    assert_identical(overridden.score(texts), records)
    assert any(r["truncated"] for r in records)


def test_overrides_of_the_bundled_pairs_scoring_json(tmp_path, bundled_scorer):
    from scalingfilter import QualityScorer

    texts = generated_texts(60, seed=2)
    scorer = QualityScorer.from_pretrained("bundled", max_len=64, prepend_bos=False)
    assert (scorer.settings.max_len, scorer.settings.prepend_bos) == (64, False)
    records, _ = cli_scores(tmp_path, texts, "--pair", "bundled", "--max-len", "64", "--no-prepend-bos")
    assert_identical(scorer.score(texts), records)
    # and the override changed the numbers (it was applied, not ignored)
    assert [s.quality_factor for s in scorer.score(texts[5:15])] != [s.quality_factor for s in bundled_scorer.score(texts[5:15])]


def test_score_iter_streams_in_windows(tiny_pair_dir):
    from scalingfilter import QualityScorer

    scorer = QualityScorer.from_pretrained(str(tiny_pair_dir), max_len=32)
    texts = generated_texts(100, seed=3)
    pulled = []

    def source():
        for t in texts:
            pulled.append(t)
            yield t

    stream = scorer.score_iter(source(), batch_size=10)
    first = next(stream)
    # one window scored, at most two more read ahead: the stream is not read to its end
    assert len(pulled) <= 40
    rest = list(stream)
    whole = scorer.score(texts)
    # windows of 10 batch differently from one window of 100: the same numbers up to float rounding
    assert [s.n_tokens for s in [first, *rest]] == [s.n_tokens for s in whole]
    for a, b in zip([first, *rest], whole):
        assert (a.quality_factor is None and b.quality_factor is None) or a.quality_factor == pytest.approx(b.quality_factor, rel=1e-5)
    # the same window as a stream's: bit-identical
    assert [s.to_dict() for s in scorer.score_iter(iter(texts), batch_size=2048)] == [s.to_dict() for s in whole]


def test_texts_that_are_not_strings_get_an_error_not_a_crash(tiny_pair_dir):
    from scalingfilter import QualityScorer

    scorer = QualityScorer.from_pretrained(str(tiny_pair_dir), max_len=32)
    a, none, b = scorer.score(["some text here", None, "more text here"])
    assert none.quality_factor is None and none.score_error and none.n_tokens == 0
    assert a.quality_factor is not None and b.quality_factor is not None


def test_errors_name_parameters_and_the_cli_names_flags(tmp_path, tiny_pair_dir, capsys):
    from scalingfilter import QualityScorer

    with pytest.raises(UsageError) as err:
        QualityScorer.from_pretrained("bundled", max_len=1024)
    assert "max_len=1024 exceeds the models' context of 512" in str(err.value) and "--" not in str(err.value)
    assert err.value.cli_message().startswith("--max-len=1024 exceeds")
    for bad in ({"max_len": 1}, {"max_tokens_per_batch": 0}, {"prepend_bos": "yes"}, {"window_docs": 0}):
        with pytest.raises(UsageError, match=f"{next(iter(bad))}="):
            QualityScorer.from_pretrained(str(tiny_pair_dir), **bad)
    with pytest.raises(Exception, match="pair='nowhere'"):
        QualityScorer.from_pretrained("nowhere")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "hello world"}\n')
    assert cli_main(["score", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--pair", "bundled",
                     "--max-len", "1024", "--no-progress"]) == 2
    err_line = capsys.readouterr().err.strip()
    assert err_line == ("scalingfilter score: error: --max-len=1024 exceeds the models' context of 512 tokens; "
                        "use --max-len=512 or less")


def test_import_loads_no_torch_and_every_public_name_resolves():
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import scalingfilter"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "scalingfilter" in imported
    heavy = {m for m in imported if m.split(".")[0] in ("torch", "transformers", "numpy", "tokenizers")}
    assert not heavy, heavy
    import scalingfilter

    for name in scalingfilter.__all__:
        assert getattr(scalingfilter, name) is not None
        assert name in dir(scalingfilter)
    with pytest.raises(AttributeError):
        scalingfilter.no_such_name  # noqa: B018


def test_semantic_diversity_equals_the_diversity_command(tmp_path):
    """Texts in: the bundled MiniLM embeds them as `diversity` does, so the score is the command's (--full:
    one group of all; --group-size: the mean over the seeded groups). Embeddings in: vendi_score's."""
    import numpy as np

    from scalingfilter import semantic_diversity, vendi_score

    texts = [t for t in generated_texts(25, seed=5) if t.strip()]  # the edge cases (one word, code, a page past 256 tokens) and 20 more
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")

    def command(*flags):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert cli_main(["diversity", "--input-dir", str(inp), "--output-dir", str(out), "--no-progress", *flags]) == 0
        return json.loads((out / "results.json").read_text())

    full = command("--full")
    assert semantic_diversity(texts) == full["mean"]
    # the groups, with a shorter window: both settings reach the model as the command's flags do
    grouped = command("--groups", "3", "--group-size", "12", "--seed", "4", "--max-seq-length", "64")
    assert semantic_diversity(texts, groups=3, group_size=12, seed=4, max_seq_length=64) == grouped["mean"]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8))
    assert semantic_diversity(emb) == pytest.approx(vendi_score(emb.astype(np.float32)), rel=1e-12)
    assert semantic_diversity(np.repeat(emb[:1], 5, axis=0)) == pytest.approx(1.0)  # five copies: one item's worth
    with pytest.raises(UsageError, match=r"items\[1\]"):
        semantic_diversity(["a", 3])


def test_the_entry_point_module_and_the_function_share_a_name():
    """`python -m scalingfilter.semantic_diversity` is the reference's entry point; `scalingfilter.semantic_diversity`
    the public function: after the module is imported, the package's name is the module, and calling it works."""
    import numpy as np

    import scalingfilter
    import scalingfilter.semantic_diversity as entry

    assert callable(entry.main)
    emb = np.random.default_rng(1).normal(size=(12, 4))
    assert scalingfilter.semantic_diversity(emb) == entry(emb) == pytest.approx(scalingfilter.vendi_score(emb.astype(np.float32)), rel=1e-12)
