"""A report people can look at: what the quality factor says about a scored corpus, and what a selection kept.

`build_report(scored_dir, report_dir, selected_dir=None)` writes, in `report_dir`:

- `report.html`: self-contained (the figures are embedded as PNG data URIs; each also links to its file),
  opens in any browser;
- PNG figures: histograms of log quality factor and of both perplexities, small vs large loss scatter,
  log quality factor against document length (kept and dropped in different colours when a selection is
  given), and log quality factor per group when `group_field` names a record field;
- `stats.json`: counts, quantiles, truncated fraction, rejected and unscored counts, selection summary.

The scored directory is streamed twice: once for the numbers (a few floats per document), once to fetch
the texts of the few documents shown (the top, the bottom and those around the threshold).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .documents import REJECTS_DIR, InputError, find_input_files, find_scored_files, read_records
from .selection import _Grow, load_selection_mask, rank_interval, score_problem

QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
KEPT_COLOUR = "#1b7837"
DROPPED_COLOUR = "#c2410c"
ALL_COLOUR = "#3b5b92"
SMALL_COLOUR = "#7b3294"
LARGE_COLOUR = "#008837"
DEFAULT_KEEP = 0.7


def _quantiles(x: np.ndarray) -> dict[str, float] | None:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return None
    qs = np.quantile(x, QUANTILES)
    out = {f"q{int(round(q * 100)):02d}": float(v) for q, v in zip(QUANTILES, qs)}
    out["mean"] = float(x.mean())
    out["std"] = float(x.std())
    return out


def _count_rejected(scored_dir: Path) -> int | None:
    """Records `score` rejected: from summary.json when it says, else the lines of the rejects files."""
    summary = scored_dir / "summary.json"
    if summary.exists():
        try:
            s = orjson.loads(summary.read_bytes())
            for key in ("rejected", "documents_rejected", "n_rejected"):
                if isinstance(s.get(key), int):
                    return s[key]
        except orjson.JSONDecodeError:
            pass
    rejects = scored_dir / REJECTS_DIR
    if not rejects.is_dir():
        return 0 if summary.exists() else None
    n = 0
    for rel in find_input_files(rejects):
        n += sum(1 for r in read_records(rejects / rel, rel) if r.data is not None or r.error)
    return n


class _Columns:
    """Growable numpy columns (a few bytes a document; groups as small integer codes)."""

    NUMERIC = ("small_loss", "large_loss", "small_ppl", "large_ppl", "quality_factor", "n_tokens", "n_chars")

    def __init__(self):
        self.cols = {k: _Grow(np.float64) for k in self.NUMERIC}
        self.cols["truncated"] = _Grow(np.bool_)
        self.cols["scored"] = _Grow(np.bool_)
        self.cols["group"] = _Grow(np.int32)
        self.group_codes: dict[str, int] = {}

    def add(self, group=None, **kw):
        for k, v in kw.items():
            self.cols[k].append(v)
        self.cols["group"].append(self.group_codes.setdefault(group, len(self.group_codes)) if group is not None else -1)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: g.get() for k, g in self.cols.items()}
        names = np.array([None] * (len(self.group_codes) + 1), dtype=object)
        for name, code in self.group_codes.items():
            names[code] = name
        out["group"] = names[out["group"]]  # -1 -> the trailing None
        return out


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def read_report_columns(scored_dir: Path, text_field: str, group_field: str | None):
    files = find_scored_files(scored_dir)
    if not files:
        raise InputError(f"no scored data files under {str(scored_dir)!r} (expected the output directory of `scalingfilter score`)")
    cols = _Columns()
    counts = []
    reasons: Counter = Counter()
    for rel in files:
        n = 0
        for rec in read_records(scored_dir / rel, rel, text_field):
            n += 1
            d = rec.data or {}
            problem = score_problem(rec.data, rec.error)
            if problem:
                reasons[problem.split(":")[0][:80]] += 1
            cols.add(
                small_loss=_num(d.get("small_loss")), large_loss=_num(d.get("large_loss")),
                small_ppl=_num(d.get("small_ppl")), large_ppl=_num(d.get("large_ppl")),
                quality_factor=_num(d.get("quality_factor")) if problem is None else math.nan,
                n_tokens=_num(d.get("n_tokens")), truncated=bool(d.get("truncated")),
                n_chars=float(len(rec.text)) if rec.text is not None else math.nan,
                group=str(d.get(group_field)) if group_field else None, scored=problem is None,
            )
        counts.append(n)
    return files, counts, cols.arrays(), reasons


# --------------------------------------------------------------------------------------------------
# Figures


def _fig_to_png(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    path.write_bytes(data)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return data


def _subsample(idx: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if len(idx) <= max_points:
        return idx
    return np.sort(rng.choice(idx, max_points, replace=False))


def make_figures(cols: dict[str, np.ndarray], out: Path, kept: np.ndarray | None, lines: dict[str, Any], group_names: list[str] | None, max_points: int = 20000, seed: int = 0) -> list[dict[str, Any]]:
    """Write the PNG figures; return [{'file', 'title', 'caption', 'png'}]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    scored = cols["scored"]
    log_qf = np.log(np.where(scored, cols["quality_factor"], np.nan))
    figures = []
    has_sel = kept is not None
    kept_mask = kept & scored if has_sel else None
    drop_mask = (~kept) & scored if has_sel else None

    def finish(fig, name, title, caption):
        data = _fig_to_png(fig, out / name)
        figures.append({"file": name, "title": title, "caption": caption, "png": data, "wide": name.endswith("by_group.png")})

    # 1. log quality factor histogram
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = log_qf[scored]
    bins = np.histogram_bin_edges(x[np.isfinite(x)], bins=60) if len(x) else 10
    if has_sel:
        ax.hist([log_qf[kept_mask], log_qf[drop_mask]], bins=bins, stacked=True, color=[KEPT_COLOUR, DROPPED_COLOUR], label=["kept", "dropped"])
    else:
        ax.hist(x, bins=bins, color=ALL_COLOUR, label="all scored")
    if lines.get("log_qf") is not None:
        ax.axvline(lines["log_qf"], color="black", ls="--", lw=1.2, label=lines["log_qf_label"])
    ax.set_xlabel("log quality factor  =  small loss − large loss  (nats)")
    ax.set_ylabel("documents")
    ax.legend(frameon=False)
    ax.set_title("Quality factor (higher = the larger model gains more = higher quality)")
    finish(fig, "log_quality_factor_hist.png", "Log quality factor",
           "Distribution of log(PPL_small / PPL_large) over the scored documents." + (" Stacked: kept and dropped by the selection." if has_sel else ""))

    # 2. perplexity histograms (log scale)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sp, lp = cols["small_ppl"][scored], cols["large_ppl"][scored]
    both = np.concatenate([sp, lp])
    both = both[np.isfinite(both) & (both > 0)]
    if len(both):
        lo, hi = both.min(), both.max()
        wide = hi / lo > 20  # log axis only when the range spans decades
        pbins = np.geomspace(lo, hi, 60) if wide else np.linspace(lo, hi if hi > lo else lo * 1.01, 60)
        ax.hist(sp, bins=pbins, histtype="step", lw=1.8, color=SMALL_COLOUR, label="small model")
        ax.hist(lp, bins=pbins, histtype="step", lw=1.8, color=LARGE_COLOUR, label="large model")
        if wide:
            from matplotlib.ticker import LogFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
            ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    for key in ("ppl_low", "ppl_high"):
        if lines.get(key) is not None:
            ax.axvline(lines[key], color="black", ls="--", lw=1.2, label=lines.get("ppl_label") if key == "ppl_low" else None)
    ax.set_xlabel("perplexity" + (" (log scale)" if len(both) and wide else ""))
    ax.set_ylabel("documents")
    ax.legend(frameon=False)
    ax.set_title("Perplexity of the small and the large model")
    finish(fig, "perplexity_hist.png", "Perplexities", "Per-document perplexity of both meta-models."
           + (" Dashed: the perplexity-gating bounds." if lines.get("ppl_low") is not None else ""))

    # 3. small vs large loss scatter
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    sl, ll = cols["small_loss"], cols["large_loss"]
    if has_sel:
        for m, colour, label in ((drop_mask, DROPPED_COLOUR, "dropped"), (kept_mask, KEPT_COLOUR, "kept")):
            idx = _subsample(np.flatnonzero(m), max_points // 2, rng)
            ax.scatter(sl[idx], ll[idx], s=6, alpha=0.45, color=colour, label=f"{label} ({int(m.sum()):,})", linewidths=0)
    else:
        idx = _subsample(np.flatnonzero(scored), max_points, rng)
        ax.scatter(sl[idx], ll[idx], s=6, alpha=0.45, color=ALL_COLOUR, label="scored", linewidths=0)
    fin = scored & np.isfinite(sl) & np.isfinite(ll)
    if fin.any():
        lo = float(min(sl[fin].min(), ll[fin].min()))
        hi = float(max(sl[fin].max(), ll[fin].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="equal loss (quality factor 1)")
        if lines.get("log_qf") is not None:
            ax.plot([lo, hi], [lo - lines["log_qf"], hi - lines["log_qf"]], color="black", ls="--", lw=1.2, label=lines["log_qf_label"])
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo - max(0.0, lines.get("log_qf") or 0.0) - 0.05 * (hi - lo), hi)
    ax.set_xlabel("small-model loss (nats/token)")
    ax.set_ylabel("large-model loss (nats/token)")
    ax.legend(frameon=False, fontsize=8, loc="upper left", markerscale=2)
    ax.set_title("Small vs large model loss")
    finish(fig, "loss_scatter.png", "Small vs large loss",
           "Each point a document; below the grey diagonal the large model does better." + (" Colours: kept and dropped." if has_sel else ""))

    # 4. log qf vs length
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    nt = cols["n_tokens"]
    ok = scored & np.isfinite(nt) & (nt > 0)
    if has_sel:
        for m, colour, label in ((drop_mask & ok, DROPPED_COLOUR, "dropped"), (kept_mask & ok, KEPT_COLOUR, "kept")):
            idx = _subsample(np.flatnonzero(m), max_points // 2, rng)
            ax.scatter(nt[idx], log_qf[idx], s=6, alpha=0.45, color=colour, label=label, linewidths=0)
    else:
        idx = _subsample(np.flatnonzero(ok), max_points, rng)
        ax.scatter(nt[idx], log_qf[idx], s=6, alpha=0.45, color=ALL_COLOUR, label="scored", linewidths=0)
    if ok.sum() >= 20:  # median per length bin
        edges = np.unique(np.geomspace(nt[ok].min(), nt[ok].max() + 1, 16))
        which = np.digitize(nt[ok], edges)
        centres, medians = [], []
        for b in np.unique(which):
            sel = which == b
            if sel.sum() >= 5:
                centres.append(float(np.exp(np.mean(np.log(nt[ok][sel])))))
                medians.append(float(np.median(log_qf[ok][sel])))
        ax.plot(centres, medians, color="black", lw=1.8, label="median per length bin")
    if lines.get("log_qf") is not None:
        ax.axhline(lines["log_qf"], color="black", ls="--", lw=1.2, label=lines["log_qf_label"])
    ax.set_xscale("log")
    ax.set_xlabel("tokens scored (log scale)")
    ax.set_ylabel("log quality factor")
    ax.legend(frameon=False, fontsize=8, markerscale=2)
    ax.set_title("Quality factor against document length")
    finish(fig, "quality_factor_vs_length.png", "Quality factor vs length",
           "Does the score prefer long or short documents? (Truncated documents sit at the scoring --max-len.)")

    # 5. per group
    if group_names:
        groups = cols["group"]
        names = sorted({g for g in groups[scored]})
        fig, axes = plt.subplots(1, 2 if has_sel else 1, figsize=(11 if has_sel else 7.5, 0.5 * len(names) + 1.9), squeeze=False)
        ax = axes[0, 0]
        data = [log_qf[scored & (groups == g)] for g in names]
        try:  # matplotlib >= 3.10 says orientation=, older ones vert=
            ax.boxplot(data, orientation="horizontal", showfliers=False)
        except TypeError:
            ax.boxplot(data, vert=False, showfliers=False)
        ax.set_yticks(range(1, len(names) + 1), names)
        if lines.get("log_qf") is not None:
            ax.axvline(lines["log_qf"], color="black", ls="--", lw=1.2)
        ax.set_xlabel("log quality factor")
        ax.set_title(f"Log quality factor by {group_names[0]}")
        if has_sel:
            ax2 = axes[0, 1]
            frac = [float(kept[scored & (groups == g)].mean()) if (scored & (groups == g)).any() else 0.0 for g in names]
            ax2.barh(range(1, len(names) + 1), frac, color=KEPT_COLOUR)
            ax2.set_yticks(range(1, len(names) + 1), names)
            ax2.set_xlim(0, 1)
            ax2.set_xlabel("fraction kept")
            ax2.set_title("Kept by the selection")
            for i, f in enumerate(frac, start=1):
                ax2.text(min(f + 0.02, 0.9), i, f"{f:.0%}", va="center", fontsize=8)
        fig.tight_layout()
        finish(fig, "quality_factor_by_group.png", f"By {group_names[0]}",
               f"Log quality factor for each value of the record field {group_names[0]!r}" + (", and the fraction of each kept." if has_sel else "."))
    return figures


# --------------------------------------------------------------------------------------------------
# Examples


def _pick_examples(log_qf: np.ndarray, scored: np.ndarray, threshold: float | None, n: int) -> dict[str, list[int]]:
    pos = np.flatnonzero(scored & np.isfinite(log_qf))
    if len(pos) == 0:
        return {}
    order = pos[np.lexsort((pos, -log_qf[pos]))]  # descending log qf, ties by position
    out = {"top": order[:n].tolist(), "bottom": order[::-1][:n].tolist()}
    if threshold is not None:
        i = int(np.searchsorted(-log_qf[order], -threshold, side="right"))  # first below the threshold
        half = max(1, n // 2)
        out["threshold"] = order[max(0, i - half) : i + (n - half)].tolist()
    return out


def _fetch_texts(scored_dir: Path, files: list[str], counts: list[int], wanted: set[int], text_field: str, chars: int) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    start = 0
    for rel, n in zip(files, counts):
        local = {p - start for p in wanted if start <= p < start + n}
        if local:
            for i, rec in enumerate(read_records(scored_dir / rel, rel, text_field)):
                if i in local:
                    text = rec.text or ""
                    found[start + i] = {"where": f"{rel} line {rec.index + 1}", "text": text[:chars], "more": len(text) > chars}
                    if len(found) == len(wanted):
                        return found
        start += n
    return found


# --------------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.7em;margin:0 0 4px}h2{margin-top:36px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
.sub{color:#5a6273;margin:0 0 18px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:1.35em}.card span{color:#5a6273;font-size:.85em}
table{border-collapse:collapse;background:#fff;font-size:.88em;margin:8px 0}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#eef1f5}td.l,th.l{text-align:left}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:18px}
figure{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:0;padding:10px}
figure img{width:100%;height:auto;display:block}
figure.wide{grid-column:1/-1}figure.wide img{max-width:1000px;margin:0 auto}
figcaption{color:#4a5263;font-size:.85em;margin-top:6px}
.doc{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:8px 12px;margin:8px 0}
.doc .meta{font-size:.8em;color:#5a6273;margin-bottom:4px}
.doc pre{white-space:pre-wrap;word-break:break-word;font-size:.82em;margin:0;max-height:12em;overflow:auto;font-family:ui-monospace,Menlo,Consolas,monospace}
.tag{display:inline-block;border-radius:4px;padding:0 6px;font-size:.75em;color:#fff;margin-left:6px}
.kept{background:#1b7837}.dropped{background:#c2410c}
.note{background:#fff8e1;border:1px solid #f0d98c;border-radius:8px;padding:8px 12px}
"""


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _render_html(stats: dict[str, Any], figures: list[dict[str, Any]], examples: dict[str, list[dict[str, Any]]], notes: list[str]) -> str:
    e = html.escape
    c = stats["counts"]
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>ScalingFilter report</title>", f"<style>{CSS}</style>", "</head>", "<body>", "<main>"]
    parts.append("<h1>ScalingFilter report</h1>")
    parts.append(f'<p class="sub">Scored corpus: <code>{e(stats["scored_dir"])}</code>'
                 + (f' &middot; selection: <code>{e(stats["selection"]["dir"])}</code>' if stats.get("selection") else "") + "</p>")
    for note in notes:
        parts.append(f'<p class="note">{note}</p>')
    cards = [("documents", c["documents"]), ("scored", c["scored"]), ("unscored", c["unscored"]),
             ("rejected by score", c["rejected"] if c["rejected"] is not None else "–"),
             ("truncated", f'{stats["truncated_fraction"]:.1%}' if stats["truncated_fraction"] is not None else "–"),
             ("tokens scored", c["tokens_scored"])]
    sel = stats.get("selection")
    if sel:
        cards.append(("kept", f'{sel["documents_selected"]:,} ({sel["kept_fraction_documents"]:.1%})' if sel.get("kept_fraction_documents") is not None else sel["documents_selected"]))
    parts.append('<div class="cards">' + "".join(f"<div class=\"card\"><b>{_fmt(v)}</b><span>{e(k)}</span></div>" for k, v in cards) + "</div>")

    if sel:
        parts.append("<h2>Selection</h2><table>")
        rows = [("method", sel["method"]), ("keep", f'{sel["keep"]:g} of the {sel["by"]}'), ("seed", sel.get("seed")), ("temperature", sel.get("temperature"))]
        for k, v in sel.get("thresholds", {}).items():
            rows.append((k.replace("_", " "), v))
        rows += [("tokens kept", f'{sel["tokens_selected"]:,} ({sel["kept_fraction_tokens"]:.1%})' if sel.get("kept_fraction_tokens") is not None else None),
                 ("mean log qf kept / dropped", f'{_fmt(sel.get("mean_log_qf_kept"))} / {_fmt(sel.get("mean_log_qf_dropped"))}')]
        for k, v in rows:
            if v is not None:
                parts.append(f'<tr><th class="l">{e(k)}</th><td class="l">{_fmt(v, 6) if isinstance(v, float) else e(str(v))}</td></tr>')
        parts.append("</table>")

    parts.append("<h2>Figures</h2><div class=\"figs\">")
    for f in figures:
        b64 = base64.b64encode(f["png"]).decode("ascii")
        cls = ' class="wide"' if f.get("wide") else ""
        parts.append(f'<figure{cls}><a href="{e(f["file"])}"><img src="data:image/png;base64,{b64}" alt="{e(f["title"])}"></a>'
                     f'<figcaption><b>{e(f["title"])}.</b> {e(f["caption"])} <a href="{e(f["file"])}">{e(f["file"])}</a></figcaption></figure>')
    parts.append("</div>")

    parts.append("<h2>Summary statistics</h2><table><tr><th class=\"l\">quantity</th>" + "".join(f"<th>{q}</th>" for q in ("min", "1%", "5%", "25%", "median", "75%", "95%", "99%", "max", "mean")) + "</tr>")
    labels = {"log_quality_factor": "log quality factor", "quality_factor": "quality factor", "small_ppl": "small-model perplexity",
              "large_ppl": "large-model perplexity", "small_loss": "small-model loss", "large_loss": "large-model loss",
              "n_tokens": "tokens scored", "n_chars": "characters"}
    for key, label in labels.items():
        q = stats["quantiles"].get(key)
        if q:
            vals = [q["q00"], q["q01"], q["q05"], q["q25"], q["q50"], q["q75"], q["q95"], q["q99"], q["q100"], q["mean"]]
            parts.append(f'<tr><th class="l">{e(label)}</th>' + "".join(f"<td>{_fmt(v)}</td>" for v in vals) + "</tr>")
    parts.append("</table>")
    if stats["unscored_reasons"]:
        parts.append("<p>Unscored documents, by reason:</p><table><tr><th class=\"l\">reason</th><th>documents</th></tr>"
                     + "".join(f'<tr><td class="l">{e(k)}</td><td>{v:,}</td></tr>' for k, v in stats["unscored_reasons"].items()) + "</table>")
    if stats.get("groups"):
        g = stats["groups"]
        parts.append(f'<p>By <code>{e(g["field"])}</code>:</p><table><tr><th class="l">{e(g["field"])}</th><th>documents</th><th>median log qf</th>'
                     + ("<th>kept</th>" if sel else "") + "</tr>")
        for name, row in g["values"].items():
            parts.append(f'<tr><td class="l">{e(name)}</td><td>{row["documents"]:,}</td><td>{_fmt(row["median_log_qf"])}</td>'
                         + (f'<td>{row["kept_fraction"]:.1%}</td>' if sel and row.get("kept_fraction") is not None else ("<td>–</td>" if sel else "")) + "</tr>")
        parts.append("</table>")

    titles = {"top": "Highest quality factor", "threshold": "Around the threshold", "bottom": "Lowest quality factor"}
    for key in ("top", "threshold", "bottom"):
        docs = examples.get(key)
        if not docs:
            continue
        parts.append(f"<h2>{titles[key]}</h2>")
        if key == "threshold":
            th = stats["threshold"]
            parts.append(f'<p class="sub">{e(th["label"])}' + (f': log quality factor {_fmt(th["log_qf"], 5)}' if th["log_qf"] is not None else "") + "</p>")
        for d in docs:
            tag = ""
            if d.get("kept") is not None:
                tag = '<span class="tag kept">kept</span>' if d["kept"] else '<span class="tag dropped">dropped</span>'
            parts.append(f'<div class="doc"><div class="meta">log qf <b>{_fmt(d["log_qf"], 4)}</b> &middot; ppl small {_fmt(d["small_ppl"])} / large {_fmt(d["large_ppl"])}'
                         f' &middot; {_fmt(d["n_tokens"])} tokens{" (truncated)" if d["truncated"] else ""}'
                         f'{" &middot; " + e(str(d["group"])) if d.get("group") else ""} &middot; {e(d["where"])}{tag}</div>'
                         f'<pre>{e(d["text"])}{"…" if d["more"] else ""}</pre></div>')
    links = ", ".join('<a href="{0}">{0}</a>'.format(e(f["file"])) for f in figures)
    parts.append(f'<h2>Files</h2><p>Statistics as JSON: <a href="stats.json">stats.json</a>. Figures: {links}.</p>')
    parts += ["</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------


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
) -> dict[str, Any]:
    """Write report.html, the PNG figures and stats.json into `report_dir`; return the stats."""
    scored_dir, out = Path(scored_dir), Path(report_dir)
    files, counts, cols, reasons = read_report_columns(scored_dir, text_field, group_field)
    out.mkdir(parents=True, exist_ok=True)
    n = len(cols["scored"])
    scored = cols["scored"]
    log_qf = np.log(np.where(scored, cols["quality_factor"], np.nan))

    kept = None
    selection = None
    lines: dict[str, Any] = {}
    if selected_dir is not None:
        sel = load_selection_mask(selected_dir)
        if sel["files"] != files or sel["file_counts"] != counts:
            raise InputError(f"the selection in {str(selected_dir)!r} was not made from {str(scored_dir)!r} (its files or record counts differ)")
        kept = sel["kept"].astype(bool)
        m = sel["manifest"]
        selection = {k: m.get(k) for k in ("method", "keep", "by", "seed", "temperature", "thresholds", "documents_selected",
                                           "kept_fraction_documents", "tokens_selected", "kept_fraction_tokens")}
        selection["dir"] = str(selected_dir)
        selection["mean_log_qf_kept"] = float(np.nanmean(log_qf[kept & scored])) if (kept & scored).any() else None
        selection["mean_log_qf_dropped"] = float(np.nanmean(log_qf[~kept & scored])) if (~kept & scored).any() else None
        th = m.get("thresholds", {})
        if m.get("method") == "top-k" and th.get("log_quality_factor") is not None:
            lines["log_qf"], lines["log_qf_label"] = th["log_quality_factor"], f"top-k threshold (keep {m['keep']:g})"
        if m.get("method") == "perplexity-gating":
            lines["ppl_low"], lines["ppl_high"] = th.get("large_ppl_low"), th.get("large_ppl_high")
            lines["ppl_label"] = f"gate: {100 * (1 - m['keep']) / 2:g}th-{100 * (1 + m['keep']) / 2:g}th percentile"
    threshold_label = lines.get("log_qf_label")
    gated = lines.get("ppl_low") is not None
    if lines.get("log_qf") is None and scored.any() and not gated:  # show where top-k at the paper's 70 % would cut
        b = rank_interval(-log_qf, DEFAULT_KEEP)
        if b.kept:
            lines["log_qf"] = -b.upper[0]
            threshold_label = lines["log_qf_label"] = f"top-k threshold at keep {DEFAULT_KEEP:g} (paper default)"

    group_names = [group_field] if group_field else None
    figures = make_figures(cols, out, kept, lines, group_names, max_points)

    picks = _pick_examples(log_qf, scored, lines.get("log_qf"), n_examples)
    if gated:  # around each perplexity gate instead
        ppl = cols["large_ppl"]
        pos = np.flatnonzero(scored & np.isfinite(ppl))
        order = pos[np.lexsort((pos, ppl[pos]))]
        half = max(1, n_examples // 2)
        around = []
        for bound in (lines["ppl_low"], lines["ppl_high"]):
            i = int(np.searchsorted(ppl[order], bound, side="left"))
            around += order[max(0, i - half // 2 - half % 2) : i + half // 2 + 1].tolist()
        picks["threshold"] = list(dict.fromkeys(around))
        threshold_label = f"around the perplexity gates: large-model perplexity {lines['ppl_low']:.5g} and {lines['ppl_high']:.5g}"
    wanted = {p for v in picks.values() for p in v}
    texts = _fetch_texts(scored_dir, files, counts, wanted, text_field, snippet_chars)
    examples = {}
    for key, positions in picks.items():
        examples[key] = [{
            "position": p, "log_qf": float(log_qf[p]), "small_ppl": float(cols["small_ppl"][p]), "large_ppl": float(cols["large_ppl"][p]),
            "n_tokens": int(cols["n_tokens"][p]) if np.isfinite(cols["n_tokens"][p]) else None, "truncated": bool(cols["truncated"][p]),
            "group": cols["group"][p] if group_field else None, "kept": bool(kept[p]) if kept is not None else None,
            **texts.get(p, {"where": "?", "text": "", "more": False}),
        } for p in positions]

    tok = cols["n_tokens"]
    stats: dict[str, Any] = {
        "scored_dir": str(scored_dir),
        "files": len(files),
        "counts": {"documents": n, "scored": int(scored.sum()), "unscored": int(n - scored.sum()), "rejected": _count_rejected(scored_dir),
                   "tokens_scored": int(np.nansum(tok[scored])), "truncated": int((cols["truncated"] & scored).sum())},
        "truncated_fraction": float(cols["truncated"][scored].mean()) if scored.any() else None,
        "unscored_reasons": dict(reasons.most_common()),
        "quantiles": {
            "log_quality_factor": _quantiles(log_qf[scored]),
            "quality_factor": _quantiles(cols["quality_factor"][scored]),
            "small_ppl": _quantiles(cols["small_ppl"][scored]), "large_ppl": _quantiles(cols["large_ppl"][scored]),
            "small_loss": _quantiles(cols["small_loss"][scored]), "large_loss": _quantiles(cols["large_loss"][scored]),
            "n_tokens": _quantiles(tok[scored]), "n_chars": _quantiles(cols["n_chars"][scored]),
        },
        "threshold": {"log_qf": lines.get("log_qf"), "label": threshold_label},
        "selection": selection,
        "figures": [f["file"] for f in figures],
        "examples": {k: [{kk: vv for kk, vv in d.items() if kk != "text"} for d in v] for k, v in examples.items()},
    }
    ok = scored & np.isfinite(log_qf) & np.isfinite(tok)
    if ok.sum() >= 3 and np.ptp(log_qf[ok]) > 0 and np.ptp(tok[ok]) > 0:
        from scipy.stats import spearmanr

        rho = spearmanr(log_qf[ok], tok[ok]).statistic
        stats["spearman_log_qf_vs_tokens"] = float(rho) if np.isfinite(rho) else None
    if group_field:
        groups = cols["group"]
        values = {}
        for g in sorted(set(groups.tolist())):
            m = groups == g
            ms = m & scored
            values[g] = {"documents": int(m.sum()), "scored": int(ms.sum()),
                         "median_log_qf": float(np.median(log_qf[ms])) if ms.any() else None,
                         "kept_fraction": float(kept[ms].mean()) if kept is not None and ms.any() else None}
        stats["groups"] = {"field": group_field, "values": values}

    (out / "stats.json").write_bytes(orjson.dumps(stats, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    (out / "report.html").write_text(_render_html(stats, figures, examples, [html.escape(x) for x in (notes or [])]), encoding="utf-8")
    return stats
