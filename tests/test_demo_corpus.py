"""The demo corpus comes from text the installation brings; the demo runs the whole path."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import orjson
import pytest

from scalingfilter.cli.app import main as cli_main
from scalingfilter.stages.demo_corpus import KINDS, build_demo_corpus, collect_demo_documents
from scalingfilter.io.walk import iter_corpus


@pytest.fixture(scope="module")
def docs():
    return collect_demo_documents(80, seed=0)


def test_mix_size_and_determinism(docs):
    assert len(docs) == 80
    kinds = {k: sum(d["kind"] == k for d in docs) for k in KINDS}
    assert kinds == {"prose": 40, "code": 16, "licence": 12, "listing": 12}
    assert docs == collect_demo_documents(80, seed=0)
    assert [d["text"] for d in docs] != [d["text"] for d in collect_demo_documents(80, seed=1)]
    assert len({d["text"] for d in docs}) == len(docs)  # no duplicates
    assert all(200 <= len(d["text"]) <= 2000 for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)


def test_text_is_real_installed_text(docs):
    """Every document is found verbatim (up to the indentation docstrings lose) in a file the installation brings."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for d in docs:
        origin = d["origin"]
        first_line = d["text"].strip().splitlines()[0].strip()
        if origin.startswith("python-stdlib:") and origin.endswith(("(docstring)", "(source)")):
            rel = origin.split(":")[1]
            assert first_line in (stdlib / rel).read_text(encoding="utf-8"), origin
        elif origin.startswith("python-pydoc-topics:"):
            from pydoc_data.topics import topics

            assert d["text"].strip()[:200] in topics[origin.split(":")[1].split("#")[0]]
        elif origin.startswith("python-stdlib:LICENSE.txt"):
            assert d["text"][:200] in (stdlib / "LICENSE.txt").read_text(encoding="utf-8")
        else:  # a distribution's licence or RECORD file
            from importlib import metadata

            name, rest = origin.split(":", 1)
            dist = metadata.distribution(name)
            path = rest.split("#")[0]
            content = dist.read_text("RECORD") if path == "RECORD" else next(f for f in dist.files if f.as_posix() == path).read_text(encoding="utf-8")
            assert d["text"][:200] in content, origin
        if d["kind"] == "listing":
            assert all(line.count(",") >= 2 for line in d["text"].splitlines()), origin
        if d["kind"] == "code":
            assert first_line.startswith(("def ", "class ", "async def ", "@")), origin
            lines = d["text"].splitlines()
            assert len(lines) < 2 or not lines[1].strip().startswith(('"""', "'''", 'r"""')), origin  # docstring cut out


def test_build_writes_a_corpus(tmp_path):
    info = build_demo_corpus(tmp_path / "c", n_docs=30, seed=2)
    assert info["documents"] == 30 and [f["path"] for f in info["files"]] == ["part-00000.jsonl", "part-00001.jsonl.gz"]
    records = list(iter_corpus(tmp_path / "c"))
    assert len(records) == 30 and all(r.error is None and r.text for r in records)
    assert {r.data["kind"] for r in records} == set(KINDS)


def test_demo_end_to_end(tiny_pair_dir, tmp_path, capsys):
    pytest.importorskip("scalingfilter.stages.score")
    out = tmp_path / "demo"
    assert cli_main(["demo", "--output-dir", str(out), "--pair", str(tiny_pair_dir), "--docs", "24", "--max-len", "64", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "kept by kind" in printed
    manifest = orjson.loads((out / "selected" / "selection.json").read_bytes())
    assert manifest["method"] == "top-k" and manifest["documents_selected"] == round(0.7 * manifest["documents_scored"])
    html = (out / "report" / "report.html").read_text()
    assert "quality_factor_by_group.png" in html
    # a second run replaces its own output; a foreign directory is refused
    assert cli_main(["demo", "--output-dir", str(out), "--pair", str(tiny_pair_dir), "--docs", "24", "--max-len", "64", "--no-progress"]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert cli_main(["demo", "--output-dir", str(foreign), "--pair", str(tiny_pair_dir)]) == 2
    assert (foreign / "keep.txt").read_text() == "mine"


def test_demo_without_bundled_pair_says_so(tmp_path, monkeypatch, capsys):
    import scalingfilter.bundled
    from scalingfilter.stages.demo import resolve_demo_pair

    monkeypatch.setattr(scalingfilter.bundled, "bundled_pair_dir", lambda: None)  # an installation without the pair
    texts = [d["text"] for d in collect_demo_documents(20, seed=0)]
    say = lambda m: print(m)  # noqa: E731
    pair, warning = resolve_demo_pair("bundled", tmp_path, texts, 64, say)
    assert Path(pair, "small").is_dir() and Path(pair, "large").is_dir()
    assert "RANDOMLY INITIALISED" in warning and "RANDOMLY INITIALISED" in capsys.readouterr().out
    assert resolve_demo_pair("/some/dir", tmp_path, texts, 64, say) == ("/some/dir", None)
