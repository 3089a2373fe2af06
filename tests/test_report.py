"""Report: the HTML is well formed, every figure it references exists and is a valid PNG, the stats add up."""

from __future__ import annotations

import base64
import struct
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from scalingfilter.cli import main as cli_main
from scalingfilter.documents import InputError, write_records
from scalingfilter.report import build_report
from scalingfilter.selection import select_corpus
from test_selection import make_scored_dir

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class StrictChecker(HTMLParser):
    """Every non-void element closed, in order; collects image sources and links."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.seen: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.seen.add(tag)
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> does not close <{self.stack[-1] if self.stack else None}> at {self.getpos()}")
        else:
            self.stack.pop()


def check_png(data: bytes) -> tuple[int, int]:
    """Signature, IHDR first and IEND last: a valid PNG; returns (width, height)."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND"
    return width, height


def check_report(report_dir: Path) -> StrictChecker:
    text = (report_dir / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    checker = StrictChecker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, f"unclosed: {checker.stack}"
    assert {"html", "head", "body", "title", "img", "table"} <= checker.seen
    assert checker.srcs
    for src in checker.srcs:  # embedded: the page is self-contained
        assert src.startswith("data:image/png;base64,")
        w, h = check_png(base64.b64decode(src.split(",", 1)[1]))
        assert w > 200 and h > 200
    for href in checker.hrefs:  # and every linked file exists beside it
        assert "://" not in href
        target = report_dir / href
        assert target.exists(), href
        if href.endswith(".png"):
            check_png(target.read_bytes())
    return checker


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    records = make_scored_dir(root)
    for r in records:
        r["kind"] = ["prose", "code", "listing"][r["id"] % 3]
    return root, records


def test_report_without_selection(scored, tmp_path):
    root, records = scored
    stats = build_report(root, tmp_path / "r")
    checker = check_report(tmp_path / "r")
    assert len(stats["figures"]) == 4 and len(checker.srcs) == 4
    assert {f"{f}" for f in stats["figures"]} <= set(checker.hrefs)
    on_disk = orjson.loads((tmp_path / "r" / "stats.json").read_bytes())
    c = on_disk["counts"]
    n_unscored = sum(r["quality_factor"] is None for r in records)
    assert c["documents"] == len(records) and c["unscored"] == n_unscored and c["rejected"] == 1
    assert on_disk["unscored_reasons"] == {"too short to score": n_unscored}
    q = on_disk["quantiles"]["quality_factor"]
    assert q["q00"] <= q["q50"] <= q["q100"]
    assert on_disk["threshold"]["label"].startswith("top-k threshold at keep 0.7")
    assert on_disk["selection"] is None
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Highest quality factor" in html and "Lowest quality factor" in html and "Around the threshold" in html


def test_report_with_selection_and_groups(scored, tmp_path):
    root, records = scored
    grouped = tmp_path / "grouped"
    grouped.mkdir()
    for rel in ("a.jsonl", "sub/b.jsonl.gz", "sub/deeper/c.parquet"):  # the same corpus with a `kind` field
        (grouped / rel).parent.mkdir(parents=True, exist_ok=True)
    write_records(grouped / "a.jsonl", records[:120])
    write_records(grouped / "sub/b.jsonl.gz", records[120:210])
    write_records(grouped / "sub/deeper/c.parquet", records[210:])
    for method in ("top-k", "perplexity-gating"):
        select_corpus(grouped, tmp_path / f"sel-{method}", keep=0.7, method=method)
        stats = build_report(grouped, tmp_path / f"rep-{method}", selected_dir=tmp_path / f"sel-{method}", group_field="kind",
                             notes=["<b>escaped</b> & shown"])
        check_report(tmp_path / f"rep-{method}")
        assert "quality_factor_by_group.png" in stats["figures"] and len(stats["figures"]) == 5
        sel = stats["selection"]
        assert sel["method"] == method and sel["documents_selected"] == round(0.7 * sum(r["quality_factor"] is not None for r in records))
        groups = stats["groups"]["values"]
        assert set(groups) == {"prose", "code", "listing"} and sum(g["documents"] for g in groups.values()) == len(records)
        html = (tmp_path / f"rep-{method}" / "report.html").read_text()
        assert "&lt;b&gt;escaped&lt;/b&gt; &amp; shown" in html
        kept_flags = [d["kept"] for d in stats["examples"]["top"]]
        if method == "top-k":
            assert all(kept_flags) and not any(d["kept"] for d in stats["examples"]["bottom"])
            assert sel["mean_log_qf_kept"] > sel["mean_log_qf_dropped"]
        else:
            assert "large_ppl_low" in sel["thresholds"] and stats["threshold"]["log_qf"] is None
            assert stats["threshold"]["label"].startswith("around the perplexity gates")
            ppls = sorted(d["large_ppl"] for d in stats["examples"]["threshold"])
            lo, hi = sel["thresholds"]["large_ppl_low"], sel["thresholds"]["large_ppl_high"]
            assert ppls[0] < lo < ppls[len(ppls) // 2] < hi < ppls[-1]  # documents at both gates, on both sides
            assert any(d["kept"] for d in stats["examples"]["threshold"]) and not all(d["kept"] for d in stats["examples"]["threshold"])


def test_selection_from_another_corpus_is_refused(scored, tmp_path):
    root, _ = scored
    other = tmp_path / "other"
    other.mkdir()
    write_records(other / "x.jsonl", [{"text": "t", "quality_factor": 1.0, "large_ppl": 3.0, "n_tokens": 3, "score_error": None}])
    select_corpus(other, tmp_path / "sel", keep=0.5)
    with pytest.raises(InputError, match="was not made from"):
        build_report(root, tmp_path / "r", selected_dir=tmp_path / "sel")


def test_report_cli(scored, tmp_path, capsys):
    root, _ = scored
    assert cli_main(["report", "--input-dir", str(root), "--output-dir", str(tmp_path / "r"), "--examples", "2"]) == 0
    assert "report.html" in capsys.readouterr().out
    check_report(tmp_path / "r")
    assert cli_main(["report", "--input-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "r2")]) == 2
