"""report.html: the statistics, figures and examples rendered through the jinja2 template
`templates/report.html.j2` (autoescaped: nothing from a record or a note can inject markup). The page is
self-contained: figures are embedded as PNG data URIs and also linked to their files.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"

# What each selection method does, in plain words (the manifest's own rule text is for the record).
METHOD_WORDS = {
    "top-k": "keeps the documents with the highest quality factor",
    "perplexity-gating": "keeps the documents whose large-model perplexity is in the middle of the range, dropping an "
                         "equal share at both ends (a baseline that ignores the quality factor)",
    "random": "keeps a random sample of the documents (a baseline that ignores every score)",
    "temperature": "draws documents at random, favouring those with a higher quality factor "
                   "(a lower temperature is closer to top-k)",
}

# Threshold fields of the manifest, in plain words; fields not named here (the random draw's internal
# cut-off, the rule text) are left out of the page: they stay in selection.json.
THRESHOLD_WORDS = {
    "quality_factor": "lowest quality factor kept",
    "log_quality_factor": "lowest log quality factor kept",
    "large_ppl_low": "lowest large-model perplexity kept",
    "large_ppl_high": "highest large-model perplexity kept",
    "tie_break_document": "last document kept among equal scores at the cut (earlier documents win ties)",
    "low_tie_break_document": "at the low gate, last document kept among equal perplexities",
    "high_tie_break_document": "at the high gate, last document kept among equal perplexities",
}
RANDOM_METHODS = ("random", "temperature")  # their tie-break is among random draws: nothing to read in it


def fmt(v: Any, digits: int = 4) -> str:
    """A number as people read it: 4 significant digits, thousands separators; '–' for nothing."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def pct(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def selection_rows(sel: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows describing a selection in plain words."""
    method = sel.get("method")
    rows = [("method", f"{method}: {METHOD_WORDS.get(method, '')}".rstrip(": ")),
            ("kept", f"{fmt(sel.get('documents_selected'))} documents"
             + (f" ({pct(sel['kept_fraction_documents'], 1)} of the scored)" if sel.get("kept_fraction_documents") is not None else "")),
            ("asked for", f"keep {fmt(sel.get('keep'))} of the {sel.get('by') or 'documents'}")]
    if sel.get("tokens_selected") is not None:
        rows.append(("tokens kept", f"{fmt(sel['tokens_selected'])}"
                     + (f" ({pct(sel['kept_fraction_tokens'], 1)})" if sel.get("kept_fraction_tokens") is not None else "")))
    if sel.get("seed") is not None and method in RANDOM_METHODS:
        rows.append(("random seed", fmt(sel["seed"])))
    if sel.get("temperature") is not None:
        rows.append(("temperature", fmt(sel["temperature"])))
    th = sel.get("thresholds") or {}
    for key, words in THRESHOLD_WORDS.items():
        if th.get(key) is not None and not (method in RANDOM_METHODS and "tie_break" in key):
            rows.append((words, fmt(th[key], 6)))
    if th.get("kept_quality_factor_min") is not None:
        rows.append(("quality factor of the kept documents", f"{fmt(th['kept_quality_factor_min'])} to {fmt(th.get('kept_quality_factor_max'))}"))
    rows.append(("mean log quality factor, kept / dropped", f"{fmt(sel.get('mean_log_qf_kept'))} / {fmt(sel.get('mean_log_qf_dropped'))}"))
    return rows


def render_page(stats: dict[str, Any], figures: list[dict[str, Any]], examples: dict[str, list[dict[str, Any]]],
                group_examples: dict[str, dict[str, list[dict[str, Any]]]], notes: list[str]) -> str:
    from scalingfilter.errors import require

    jinja2 = require("jinja2", "report", "scalingfilter report")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, pct=pct, b64=lambda data: base64.b64encode(data).decode("ascii"))
    return env.get_template("report.html.j2").render(
        stats=stats, figures=figures, examples=examples, group_examples=group_examples, notes=notes,
        selection_rows=selection_rows(stats["selection"]) if stats.get("selection") else [],
    )
