"""Report: refuses unfinished inputs in one line, the HTML is well formed, every figure it references exists
and is a valid PNG, the stats add up (checked against independent computations)."""

from __future__ import annotations

import base64
import math
import struct
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy.stats import spearmanr

from scalingfilter.cli.app import main as cli_main
from scalingfilter.errors import InputError
from scalingfilter.io.walk import iter_corpus
from scalingfilter.io.writers import write_records
from scalingfilter.stages.report import build_report
from scalingfilter.jobs.state import STATE_DIR, SUMMARY_NAME
from scalingfilter.stages.select import select_corpus
from test_selection import make_scored_dir, mark_as_scored

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KINDS = ["prose", "code", "listing"]


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
    assert not [p for p in report_dir.iterdir() if p.name.startswith(".")], "temporary files left behind"
    return checker


def write_summary(root: Path, records: list[dict], rejected: int) -> None:
    """The summary.json `score` writes at the end of a run (the keys the report reads)."""
    scored = sum(r["quality_factor"] is not None for r in records)
    (root / SUMMARY_NAME).write_bytes(orjson.dumps({
        "files": 3, "files_done": 3, "documents": len(records) + rejected, "scored": scored,
        "unscorable": len(records) - scored, "rejected": rejected, "settings": {}}))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A scored directory whose records carry a `kind`, and for most of them a distilled score."""
    root = tmp_path_factory.mktemp("scored")
    records = make_scored_dir(root)
    rng = np.random.default_rng(1)
    for r in records:
        r["kind"] = KINDS[r["id"] % 3]
        if r["id"] % 5 != 1:  # a fifth without the distilled score: left out of its figure and correlation
            qf = r["quality_factor"]
            r["qf_distilled"] = float(1 / (1 + math.exp(-3 * math.log(qf) - rng.normal(0, 0.5)))) if qf else 0.5
    for rel, part in (("a.jsonl", records[:120]), ("sub/b.jsonl.gz", records[120:210]), ("sub/deeper/c.parquet", records[210:])):
        write_records(root / rel, part)
    write_summary(root, records, rejected=1)
    return root, records


@pytest.fixture(scope="module")
def topk(scored, tmp_path_factory):
    root, _ = scored
    sel = tmp_path_factory.mktemp("sel") / "top-k"
    select_corpus(root, sel, keep=0.7, method="top-k", min_tokens=0)
    return sel


@pytest.fixture(scope="module")
def plain_report(scored, tmp_path_factory):
    """A report without a selection or groups (built once; several tests read it)."""
    out = tmp_path_factory.mktemp("plain") / "r"
    return out, build_report(scored[0], out)


def test_report_without_selection(scored, plain_report):
    _, records = scored
    report_dir, stats = plain_report
    checker = check_report(report_dir)
    assert len(stats["figures"]) == 5 and len(checker.srcs) == 5  # the distilled score figure included
    assert set(stats["figures"]) <= set(checker.hrefs)
    on_disk = orjson.loads((report_dir / "stats.json").read_bytes())
    c = on_disk["counts"]
    n_unscored = sum(r["quality_factor"] is None for r in records)
    assert c["documents"] == len(records) and c["unscored"] == n_unscored and c["rejected"] == 1
    assert on_disk["unscored_reasons"] == {"too short to score": n_unscored}
    q = on_disk["quantiles"]["quality_factor"]
    assert q["q00"] <= q["q50"] <= q["q100"]
    assert on_disk["threshold"]["label"].startswith("where top-k at keep 0.7 would cut")
    assert on_disk["selection"] is None and on_disk["groups"] is None
    html = (report_dir / "report.html").read_text()
    assert "Highest quality factor" in html and "Lowest quality factor" in html and "Around the threshold" in html


def test_distilled_figure_and_spearman(scored, plain_report):
    _, records = scored
    report_dir, stats = plain_report
    assert "quality_factor_vs_distilled.png" in stats["figures"]
    check_png((report_dir / "quality_factor_vs_distilled.png").read_bytes())
    both = [(math.log(r["quality_factor"]), r["qf_distilled"]) for r in records
            if r["quality_factor"] is not None and r.get("qf_distilled") is not None]
    expected = spearmanr([a for a, _ in both], [b for _, b in both]).statistic
    d = orjson.loads((report_dir / "stats.json").read_bytes())["distilled"]
    assert d["documents"] == len(both)
    assert d["spearman_log_qf_vs_qf_distilled"] == pytest.approx(expected, abs=1e-12)
    assert 0.5 < expected < 1  # the synthetic distilled score follows the quality factor


def test_no_distilled_figure_without_the_field(tmp_path):
    """Also: record text is escaped in the page, and a scored directory changed after scoring is pointed out."""
    root = tmp_path / "plain"
    root.mkdir()
    records = make_scored_dir(root, n_per_file=(40, 30, 30))
    for r in records[:40]:
        r["text"] = "<script>alert('x')</script> & more"
    write_records(root / "a.jsonl", records[:40])
    write_summary(root, records, rejected=0)
    stats = build_report(root, tmp_path / "r", n_examples=50)
    check_report(tmp_path / "r")
    assert "quality_factor_vs_distilled.png" not in stats["figures"] and "distilled" not in stats
    assert stats["counts"]["rejected"] == 0 and stats["warnings"] == []
    html = (tmp_path / "r" / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    write_records(root / "a.jsonl", records[:39])  # a line lost after scoring
    stats = build_report(root, tmp_path / "r2", n_examples=0)
    assert len(stats["warnings"]) == 1 and "the scored files hold 99" in stats["warnings"][0]
    assert "were they changed after scoring?" in (tmp_path / "r2" / "report.html").read_text()


@pytest.mark.parametrize("method", ["top-k", "perplexity-gating"])
def test_report_with_selection_and_groups(scored, tmp_path, method):
    root, records = scored
    sel_dir = tmp_path / f"sel-{method}"
    select_corpus(root, sel_dir, keep=0.7, method=method, min_tokens=0)
    stats = build_report(root, tmp_path / "rep", selected_dir=sel_dir, group_field="kind", notes=["<b>escaped</b> & shown"],
                         n_examples=4, group_examples=2)
    check_report(tmp_path / "rep")
    assert "quality_factor_by_group.png" in stats["figures"] and len(stats["figures"]) == 6
    sel = stats["selection"]
    n_scored = sum(r["quality_factor"] is not None for r in records)
    assert sel["method"] == method and sel["documents_selected"] == round(0.7 * n_scored)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "&lt;b&gt;escaped&lt;/b&gt; &amp; shown" in html
    # per group, against the kept documents counted in the selection's own output files
    kept_kinds = Counter(rec.data["kind"] for rec in iter_corpus(sel_dir))
    scored_kinds = Counter(r["kind"] for r in records if r["quality_factor"] is not None)
    groups = stats["groups"]
    assert groups["overall_kept_fraction"] == pytest.approx(sel["documents_selected"] / n_scored)
    assert set(groups["values"]) == set(KINDS) and sum(g["documents"] for g in groups["values"].values()) == len(records)
    for kind, row in groups["values"].items():
        assert row["kept"] == kept_kinds[kind] and row["kept_fraction"] == pytest.approx(kept_kinds[kind] / scored_kinds[kind])
        assert row["random_kept_fraction"] == pytest.approx(sel["documents_selected"] / n_scored)
        lo, hi = row["random_kept_range"]
        assert lo <= row["random_kept_fraction"] <= hi
        assert row["beyond_random"] == (not lo <= row["kept_fraction"] <= hi)
        ex = stats["group_examples"][kind]
        assert len(ex["kept"]) == 2 and all(d["kept"] and d["group"] == kind for d in ex["kept"])
        assert len(ex["dropped"]) == 2 and not any(d["kept"] for d in ex["dropped"]) and all(d["group"] == kind for d in ex["dropped"])
    if method == "top-k":
        assert all(d["kept"] for d in stats["examples"]["top"]) and not any(d["kept"] for d in stats["examples"]["bottom"])
        assert sel["mean_log_qf_kept"] > sel["mean_log_qf_dropped"]
    else:
        assert "large_ppl_low" in sel["thresholds"] and stats["threshold"]["log_qf"] is None
        assert stats["threshold"]["label"].startswith("around the perplexity gates")
        ppls = sorted(d["large_ppl"] for d in stats["examples"]["threshold"])
        lo, hi = sel["thresholds"]["large_ppl_low"], sel["thresholds"]["large_ppl_high"]
        assert ppls[0] < lo < ppls[len(ppls) // 2] < hi < ppls[-1]  # documents at both gates, on both sides


def test_random_range_is_the_hypergeometric_one():
    """The 95 % range of a random selection's kept fraction, against a simulation of random selections."""
    from scalingfilter.stages.report.stats import random_kept_range

    rng = np.random.default_rng(0)
    pool, kept, group = 500, 350, 60
    lo, hi = random_kept_range(group, pool, kept)
    draws = np.array([np.isin(rng.choice(pool, kept, replace=False), np.arange(group)).sum() for _ in range(4000)]) / group
    assert np.quantile(draws, 0.025) == pytest.approx(lo, abs=1.5 / group)
    assert np.quantile(draws, 0.975) == pytest.approx(hi, abs=1.5 / group)


def test_random_report_speaks_plainly(scored, tmp_path):
    root, _ = scored
    select_corpus(root, tmp_path / "sel", keep=0.5, method="random", seed=3, min_tokens=0)
    build_report(root, tmp_path / "r", selected_dir=tmp_path / "sel", group_field="kind", n_examples=1, group_examples=1)
    html = (tmp_path / "r" / "report.html").read_text().lower()
    for jargon in ("key threshold", "key_threshold", "tie break", "tie-break", "tie_break"):
        assert jargon not in html
    assert "random sample of the documents" in html


def test_selection_from_another_corpus_is_refused(scored, tmp_path):
    root, _ = scored
    other = tmp_path / "other"
    other.mkdir()
    write_records(other / "x.jsonl", [{"text": "t", "quality_factor": 1.0, "large_ppl": 3.0, "n_tokens": 3, "score_error": None}])
    mark_as_scored(other)  # select reads only finished score outputs
    select_corpus(other, tmp_path / "sel", keep=0.5, min_tokens=0)
    with pytest.raises(InputError, match="was not made from"):
        build_report(root, tmp_path / "r", selected_dir=tmp_path / "sel")


def test_a_selection_made_before_a_rescore_is_refused(tmp_path, monkeypatch):
    """An input edited without changing its line count, then rescored: the old mask, matched by file name and
    record count only, would mark other documents as kept."""
    from scalingfilter.stages.score import TEST_SCORER_ENV, score_corpus

    monkeypatch.setenv(TEST_SCORER_ENV, "fixed")
    src = tmp_path / "in"
    src.mkdir()
    lines = [orjson.dumps({"id": i, "text": "word " * (i + 1)}) for i in range(12)]
    (src / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    score_corpus(src, tmp_path / "scored", show_progress=False)
    select_corpus(tmp_path / "scored", tmp_path / "sel", keep=0.5, min_tokens=0)
    build_report(tmp_path / "scored", tmp_path / "r1", selected_dir=tmp_path / "sel")  # the same version: accepted
    (src / "a.jsonl").write_bytes(b"\n".join(reversed(lines)) + b"\n")  # the same documents, another order
    score_corpus(src, tmp_path / "scored", show_progress=False)
    with pytest.raises(InputError, match="was made before a.jsonl .* was rescored"):
        build_report(tmp_path / "scored", tmp_path / "r2", selected_dir=tmp_path / "sel")


def one_error_line(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scalingfilter report: error: "), err
    return err[0]


def test_unscored_directory_is_refused(scored, tmp_path, capsys):
    root, _ = scored
    raw = tmp_path / "raw"  # a corpus that was never scored
    raw.mkdir()
    write_records(raw / "x.jsonl", [{"text": "hello world"}])
    empty = tmp_path / "empty"
    empty.mkdir()
    for d in (raw, empty, tmp_path / "missing"):
        line = one_error_line(capsys, ["report", "--input-dir", str(d), "--output-dir", str(tmp_path / "r")])
        assert "is this a `scalingfilter score` output?" in line
    assert not (tmp_path / "r").exists()  # refused before writing anything
    # scored files but no summary.json: scoring has not finished
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    write_records(unfinished / "a.jsonl", [r.data for r in iter_corpus(root) if r.data][:5])
    line = one_error_line(capsys, ["report", "--input_dir", str(unfinished), "--output_dir", str(tmp_path / "r")])
    assert "no summary.json" in line and "is this a `scalingfilter score` output?" in line


def test_unscored_directory_refused_by_the_console_script(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_records(raw / "x.jsonl", [{"text": "hello world"}])
    proc = subprocess.run([sys.executable, "-m", "scalingfilter.cli", "report", "--input-dir", str(raw), "--output-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is this a `scalingfilter score` output?" in lines[0] and "Traceback" not in proc.stderr
    assert "matplotlib" not in proc.stderr.lower()


def test_incomplete_selection_is_refused(scored, topk, tmp_path, capsys):
    import shutil

    root, _ = scored
    for missing in ("selection.json", f"{STATE_DIR}/selection.npz"):
        partial = tmp_path / f"partial-{missing.replace('/', '_')}"
        shutil.copytree(topk, partial)
        (partial / missing).unlink()
        line = one_error_line(capsys, ["report", "--input-dir", str(root), "--output-dir", str(tmp_path / "r"), "--selected", str(partial)])
        assert "incomplete or still in progress" in line and missing in line
    garbled = tmp_path / "garbled"
    shutil.copytree(topk, garbled)
    (garbled / "selection.json").write_text("{\"method\": ")
    assert "not valid JSON" in one_error_line(capsys, ["report", "--input-dir", str(root), "--output-dir", str(tmp_path / "r"),
                                                      "--selected", str(garbled)])
    truncated = tmp_path / "truncated"
    shutil.copytree(topk, truncated)
    mask = truncated / STATE_DIR / "selection.npz"
    mask.write_bytes(mask.read_bytes()[:100])
    assert "cannot read the keep mask" in one_error_line(capsys, ["report", "--input-dir", str(root), "--output-dir", str(tmp_path / "r"),
                                                                 "--selected", str(truncated)])


@pytest.mark.parametrize("flags", [["--examples", "-1"], ["--snippet-chars", "0"], ["--group-examples", "x"], ["--max-points", "5"]])
def test_numeric_flags_are_range_checked(scored, tmp_path, capsys, flags):
    root, _ = scored
    with pytest.raises(SystemExit) as exc:
        cli_main(["report", "--input-dir", str(root), "--output-dir", str(tmp_path / "r"), *flags])
    assert exc.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_report_cli(scored, topk, tmp_path, capsys):
    root, _ = scored
    assert cli_main(["report", "--input_dir", str(root), "--output_dir", str(tmp_path / "r"), "--examples", "2", "--selected", str(topk),
                     "--group_field", "kind", "--snippet_chars", "50", "--group_examples", "1", "--max_points", "100"]) == 0
    assert "report.html" in capsys.readouterr().out
    check_report(tmp_path / "r")
    stats = orjson.loads((tmp_path / "r" / "stats.json").read_bytes())
    assert len(stats["examples"]["top"]) == 2 and stats["groups"]["field"] == "kind"


def test_log_axis_labels_do_not_collide():
    """The length plot's axis: round values in plain numbers, no minor labels, no two labels overlapping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scalingfilter.stages.report.figures import plain_log_axis

    for lo, hi in ((30, 45), (28, 512), (55, 511), (1, 3e6), (0.02, 7)):
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ticks = plain_log_axis(ax.xaxis, lo, hi)
        fig.canvas.draw()
        labels = [t for t in ax.xaxis.get_majorticklabels() if t.get_text() and t.get_visible()]
        assert 2 <= len(labels) <= 6 and len(ticks) == len(labels), (lo, hi, ticks)
        assert all("10^" not in t.get_text() and "×" not in t.get_text() for t in labels)
        assert not [t for t in ax.xaxis.get_minorticklabels() if t.get_text()]
        boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), (lo, hi, [t.get_text() for t in labels])
        plt.close(fig)


def test_kept_fraction_labels_readable():
    """A long bar carries its percentage inside in white; a short one beside it in dark text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    from scalingfilter.stages.report.figures import _kept_bars

    rows = {"a": {"kept_fraction": 1.0, "random_kept_range": [0.6, 0.8]}, "b": {"kept_fraction": 0.1, "random_kept_range": [0.6, 0.8]}}
    fig, ax = plt.subplots()
    _kept_bars(ax, ["a", "b"], rows, 0.7)
    texts = {t.get_text(): t for t in ax.texts}
    inside, outside = texts["100%"], texts["10%"]
    assert to_rgb(inside.get_color()) == (1.0, 1.0, 1.0) and inside.get_position()[0] < 1.0
    assert sum(to_rgb(outside.get_color())) < 0.5 and outside.get_position()[0] > 0.1
    plt.close(fig)


def test_a_classify_output_is_refused_in_one_line(tmp_path, capsys):
    """Issue 20 (21): report on a `classify` output (qf_distilled, no quality factor) drew four empty charts with
    exit 0; the report draws the quality factor and its perplexities, so it refuses in one line saying what works."""
    from test_selection import classify_dir

    root = tmp_path / "classified"
    classify_dir(root)
    err = one_error_line(capsys, ["report", "--input-dir", str(root), "--output-dir", str(tmp_path / "rep")])
    assert "no document of" in err and "usable quality_factor" in err and "classify` output" in err, err
    assert "report the `score` output" in err and "select --score-field qf_distilled" in err
    assert not (tmp_path / "rep" / "report.html").exists()


def _hue_saturation(colour: str) -> tuple[float, float]:
    import colorsys

    r, g, b = (int(colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4))
    h, _, s = colorsys.rgb_to_hls(r, g, b)
    return h * 360, s


def test_kept_and_dropped_colours_are_neutral(scored, tmp_path):
    """Issue 20 (26): the report coloured "kept more than random" green (and less red) even for keyword spam: it
    judges nothing, the user does. Kept/dropped (figures, tags) and more/less than random are in neutral colours:
    no green, no red or orange, and "more" looks like "less"."""
    import re

    from scalingfilter.stages.report import figures

    for colour in (figures.KEPT_COLOUR, figures.DROPPED_COLOUR):
        hue, sat = _hue_saturation(colour)
        assert sat < 0.15 or 190 <= hue <= 260, (colour, hue, sat)  # grey or blue
    root, _ = scored
    sel_dir = tmp_path / "sel"
    select_corpus(root, sel_dir, keep=0.7, min_tokens=0)
    build_report(root, tmp_path / "rep", selected_dir=sel_dir, group_field="kind", n_examples=2, group_examples=1)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert 'class="tag kept"' in html and 'class="tag dropped"' in html
    css = dict(re.findall(r"([.#\w,\s-]+)\{([^}]*)\}", html))
    rules = {sel.strip(): body for sels, body in css.items() for sel in sels.split(",")}
    assert rules[".more"] == rules[".less"]
    for name in (".more", ".kept", ".dropped"):
        for colour in re.findall(r"#[0-9a-fA-F]{6}", rules[name]):
            hue, sat = _hue_saturation(colour)
            assert sat < 0.15 or 190 <= hue <= 260, (name, colour, hue, sat)
