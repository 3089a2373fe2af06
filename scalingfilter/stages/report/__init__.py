"""A report people can look at: what the quality factor says about a scored corpus, and what a selection kept.

`build_report(scored_dir, report_dir, selected_dir=None)` writes, in `report_dir` (every file atomically):

- `report.html`: self-contained (figures embedded as PNG data URIs, each also linked to its file), rendered
  from the jinja2 template `templates/report.html.j2`; opens in any browser, at desktop or phone width;
- PNG figures: histograms of log quality factor and of both perplexities, small vs large loss scatter,
  log quality factor against document length (kept and dropped in different colours when a selection is
  given), log quality factor against the distilled score when records carry `qf_distilled`, and, when
  `group_field` names a record field, log quality factor per group and the fraction of each group kept
  beside what a random selection of the same size would keep;
- `stats.json`: counts, quantiles, truncated fraction, unscored and rejected counts, selection summary,
  per-group rates, Spearman correlations (with length; with `qf_distilled` when present).

Inputs are accepted only when finished: the scored directory must hold the `summary.json` that `score`
writes last (`jobs.state.ScoredDir`: `open`, then `require_summary`), a selection both the `selection.json` that `select` writes last and its keep mask; otherwise
a one-line InputError says what is missing or what to run. A selection made before a file of the scored
directory was rescored from a changed input is refused (`ScoredDir.changed_since` its manifest's
`scored_versions`). The scored directory is streamed twice: once for the numbers
(a few floats per document), once for the texts of the few documents shown.

Modules: `data` (reading and input checks), `stats` (numbers), `figures` (PNGs), `page` (HTML).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from scalingfilter.errors import InputError, require
from scalingfilter.io.storage import write_bytes_atomic, write_json_atomic
from scalingfilter.jobs.state import ScoredDir
from scalingfilter.stages.report.data import Corpus, fetch_texts, read_corpus, read_selection, rejected_count, summary_mismatch
from scalingfilter.stages.report.figures import Plot, make_figures
from scalingfilter.stages.report.page import render_page
from scalingfilter.stages.report.stats import (corpus_stats, group_stats, pick_examples, pick_gate_examples, pick_group_examples, selection_summary,
                    threshold_lines)

REPORT_NAME = "report.html"
STATS_NAME = "stats.json"
EXTRA = "report"  # pip install 'scalingfilter[report]'
EXTRA_MODULES = ("matplotlib", "jinja2", "scipy")  # figures, the page, rank statistics


def require_extras(what: str = "scalingfilter report") -> None:
    """Fail at once, before any reading, with the one-line pip command when a module the report needs
    is missing (the core install scores and selects; the report is the "report" extra)."""
    for module in EXTRA_MODULES:
        require(module, EXTRA, what)


def _load_kept(corpus: Corpus, state: ScoredDir, selected_dir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    scored_dir = state.root
    sel = read_selection(selected_dir)
    if sel["files"] != corpus.files or sel["file_counts"] != corpus.counts:
        raise InputError(f"the selection in {str(selected_dir)!r} was not made from {str(scored_dir)!r} (its files or record counts differ)")
    then = sel["manifest"].get("scored_versions")  # absent in selections made before it was recorded
    if isinstance(then, dict):
        changed = state.changed_since(then)
        if changed:  # the same names and counts, other records: the mask would mark the wrong documents
            raise InputError(f"the selection in {str(selected_dir)!r} was made before {changed[0]}"
                             + (f" (and {len(changed) - 1} more files)" if len(changed) > 1 else "")
                             + f" in {str(scored_dir)!r} was rescored from a changed input; rerun `scalingfilter select`")
    return sel["kept"].astype(bool), sel


def no_quality_factor(state: ScoredDir, corpus: Corpus) -> str:
    """The one line refusing a report on a directory where no document has a usable quality factor: the report's
    figures are those of the quality factor and its two perplexities, which a `classify` output lacks."""
    reasons = ", ".join(f"{k} ({v:,})" for k, v in corpus.unscored_reasons.most_common(2))
    line = f"no document of {str(state.root)!r} has a usable quality_factor ({reasons}): the report draws the quality factor and its perplexities"
    if state.kind == "classify":
        return (line + f"; this is a `scalingfilter classify` output (score field {state.score_fields[0]!r}): report the `score` output "
                "it was classified from (records that also carry qf_distilled get a figure of it there), and select on "
                "qf_distilled with `scalingfilter select --score-field qf_distilled`")
    return line + "; report a `scalingfilter score` output"


def _example_rows(corpus: Corpus, picks: dict[str, list[int]], texts: dict[int, dict[str, Any]], kept: np.ndarray | None,
                  grouped: bool) -> dict[str, list[dict[str, Any]]]:
    c, log_qf = corpus.cols, corpus.log_qf
    return {key: [{
        "position": p, "log_qf": float(log_qf[p]), "small_ppl": float(c["small_ppl"][p]), "large_ppl": float(c["large_ppl"][p]),
        "n_tokens": int(c["n_tokens"][p]) if np.isfinite(c["n_tokens"][p]) else None, "truncated": bool(c["truncated"][p]),
        "group": c["group"][p] if grouped else None, "kept": bool(kept[p]) if kept is not None else None,
        **texts.get(p, {"where": "?", "text": "", "more": False}),
    } for p in positions] for key, positions in picks.items()}


def _without_text(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {k: [{kk: vv for kk, vv in d.items() if kk != "text"} for d in v] for k, v in rows.items()}


def build_report(
    scored_dir: str | os.PathLike,
    report_dir: str | os.PathLike,
    selected_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    group_field: str | None = None,
    n_examples: int = 6,
    snippet_chars: int = 400,
    max_points: int = 20000,
    notes: list[str] | None = None,
    group_examples: int = 3,
) -> dict[str, Any]:
    """Write report.html, the PNG figures and stats.json into `report_dir`; return the stats."""
    from scalingfilter.io.locations import is_remote, location, staged_output

    require_extras()
    if is_remote(report_dir):  # written into a local directory, then each file sent whole (the page last)
        with staged_output(report_dir, last=(REPORT_NAME,)) as local:
            return build_report(scored_dir, local, selected_dir, text_field, group_field, n_examples, snippet_chars, max_points, notes, group_examples)
    scored_dir, out = location(scored_dir), Path(report_dir)
    state = ScoredDir.open(scored_dir)  # a finished score output with its summary.json, or a one-line error
    summary = state.require_summary("report")
    corpus = read_corpus(scored_dir, text_field, group_field)
    scored, log_qf = corpus.cols["scored"], corpus.log_qf
    if corpus.n and not scored.any():  # every figure would be empty
        raise InputError(no_quality_factor(state, corpus))
    kept, sel = _load_kept(corpus, state, location(selected_dir)) if selected_dir is not None else (None, None)

    stats: dict[str, Any] = {"scored_dir": str(scored_dir), "files": len(corpus.files)}
    stats.update(corpus_stats(corpus, rejected_count(summary)))
    stats["selection"] = selection_summary(sel, str(selected_dir), log_qf, scored) if sel else None
    lines = threshold_lines(sel["manifest"] if sel else None, log_qf, scored)
    stats["threshold"] = {"log_qf": lines.get("log_qf"), "label": lines.get("log_qf_label")}
    stats["groups"] = group_stats(corpus, group_field, kept) if group_field else None

    plot = Plot(corpus.cols, log_qf, kept, lines, out, group_field, stats["groups"],
                stats.get("distilled", {}).get("spearman_log_qf_vs_qf_distilled"), max_points)
    figures = make_figures(plot)
    stats["figures"] = [f["file"] for f in figures]

    picks = pick_examples(log_qf, scored, lines.get("log_qf"), n_examples)
    if lines.get("ppl_low") is not None and n_examples:  # around each perplexity gate instead
        picks["threshold"] = pick_gate_examples(corpus.cols["large_ppl"], scored, (lines["ppl_low"], lines["ppl_high"]), n_examples)
        stats["threshold"]["label"] = f"around the perplexity gates: large-model perplexity {lines['ppl_low']:.5g} and {lines['ppl_high']:.5g}"
    by_group = pick_group_examples(corpus, kept, group_examples) if group_field and group_examples else {}
    wanted = {p for v in picks.values() for p in v} | {p for sides in by_group.values() for v in sides.values() for p in v}
    texts = fetch_texts(scored_dir, corpus, wanted, text_field, snippet_chars)
    examples = _example_rows(corpus, picks, texts, kept, bool(group_field))
    group_rows = {g: _example_rows(corpus, sides, texts, kept, True) for g, sides in by_group.items()}
    stats["examples"] = _without_text(examples)
    stats["group_examples"] = {g: _without_text(rows) for g, rows in group_rows.items()}

    write_json_atomic(out / STATS_NAME, stats)
    mismatch = summary_mismatch(summary, corpus)
    stats["warnings"] = [mismatch] if mismatch else []
    page = render_page(stats, figures, examples, group_rows, [*stats["warnings"], *(notes or [])])
    write_bytes_atomic(out / REPORT_NAME, page.encode("utf-8"))
    return stats


__all__ = ["build_report", "require_extras", "REPORT_NAME", "STATS_NAME"]
