"""The report's figures: one function per figure, each drawing from a `Plot` (columns, selection, cut lines)
and writing one PNG atomically beside report.html.

Invariants: scatter plots draw at most `max_points` documents (a seeded subsample, so the same inputs give
the same picture); legends sit outside the data (below the axes) so they never hide a bar or a threshold;
log axes are labelled with plain numbers at a few round values and no minor labels (which collide).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scalingfilter.errors import require
from scalingfilter.io.storage import write_bytes_atomic

# kept and dropped in neutral colours (blue, grey), never green and red: the report judges nothing, the user does
KEPT_COLOUR = "#2f5f98"
DROPPED_COLOUR = "#9ca3af"
ALL_COLOUR = "#3b5b92"
SMALL_COLOUR = "#7b3294"
LARGE_COLOUR = "#008837"
RANDOM_COLOUR = "#4a4a4a"
LABEL_INSIDE_FROM = 0.8  # a kept-fraction bar this long carries its label inside, in white


@dataclass
class Plot:
    """What every figure draws from."""

    cols: dict[str, np.ndarray]
    log_qf: np.ndarray
    kept: np.ndarray | None
    lines: dict[str, Any]
    out: Path
    group_field: str | None = None
    groups: dict[str, Any] | None = None  # stats.group_stats
    distilled_rho: float | None = None
    max_points: int = 20000
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    @property
    def scored(self) -> np.ndarray:
        return self.cols["scored"]

    def sides(self, mask: np.ndarray) -> list[tuple[np.ndarray, str, str]]:
        """(positions, colour, label) of the documents in `mask`: dropped and kept with a selection, else all."""
        if self.kept is None:
            return [(np.flatnonzero(mask), ALL_COLOUR, "scored")]
        return [(np.flatnonzero(mask & ~self.kept), DROPPED_COLOUR, "dropped"), (np.flatnonzero(mask & self.kept), KEPT_COLOUR, "kept")]

    def subsample(self, idx: np.ndarray, share: int = 1) -> np.ndarray:
        limit = self.max_points // share
        return idx if len(idx) <= limit else np.sort(self.rng.choice(idx, limit, replace=False))


def _pyplot():
    matplotlib = require("matplotlib", "report", "scalingfilter report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plot: Plot, name: str, title: str, caption: str, wide: bool = False) -> dict[str, Any]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    data = buf.getvalue()
    write_bytes_atomic(plot.out / name, data)
    return {"file": name, "title": title, "caption": caption, "png": data, "wide": wide}


def _legend_below(ax, ncol: int = 3, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(ncol, len(handles)), frameon=False, fontsize=8.5, **kw)
        for handle in getattr(legend, "legend_handles", None) or getattr(legend, "legendHandles", []):
            handle.set_alpha(1)  # faint scatter points are for the crowd, not the key


def _plain_number(v: float, _pos=None) -> str:
    if v >= 1e6:
        return f"{v:.3g}"
    if v >= 1:
        return f"{v:,.0f}" if abs(v - round(v)) < 1e-9 else f"{v:,.1f}"
    return f"{v:.2g}"


def plain_log_axis(axis, lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Label a log axis at round values (1, 2, 5 x 10^k and denser for a narrow range) in plain numbers; no
    minor labels. Returns the ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for subs in ((1, 1.5, 2, 3, 4, 5, 6, 8), (1, 1.5, 2, 3, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):  # densest first
        ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in subs if lo <= m * 10.0**k <= hi]
        if len(ticks) <= max_ticks:
            break
    else:  # many decades: every n-th power of ten
        step = math.ceil(len(ticks) / max_ticks)
        ticks = ticks[::step]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(_plain_number))
    axis.set_minor_locator(LogLocator(subs="auto"))
    axis.set_minor_formatter(NullFormatter())
    return ticks


def fig_quality_factor_hist(plot: Plot) -> dict[str, Any]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = plot.log_qf[plot.scored]
    x = x[np.isfinite(x)]
    bins = np.histogram_bin_edges(x, bins=60) if len(x) else 10
    if plot.kept is not None:
        (d, _, _), (k, _, _) = plot.sides(plot.scored)
        ax.hist([plot.log_qf[k], plot.log_qf[d]], bins=bins, stacked=True, color=[KEPT_COLOUR, DROPPED_COLOUR],
                label=[f"kept ({len(k):,})", f"dropped ({len(d):,})"])
    else:
        ax.hist(x, bins=bins, color=ALL_COLOUR, label="all scored")
    if plot.lines.get("log_qf") is not None:
        ax.axvline(plot.lines["log_qf"], color="black", ls="--", lw=1.3, label=plot.lines["log_qf_label"])
    ax.set_xlabel("log quality factor  =  small-model loss − large-model loss  (nats)")
    ax.set_ylabel("documents")
    ax.set_title("Quality factor (higher = the larger model gains more = higher quality)", fontsize=11)
    _legend_below(ax, ncol=3)
    return _save(fig, plot, "log_quality_factor_hist.png", "Log quality factor",
                 "Distribution of log(PPL_small / PPL_large) over the scored documents."
                 + (" Stacked: kept and dropped by the selection." if plot.kept is not None else ""))


def fig_perplexity_hist(plot: Plot) -> dict[str, Any]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sp, lp = plot.cols["small_ppl"][plot.scored], plot.cols["large_ppl"][plot.scored]
    both = np.concatenate([sp, lp])
    both = both[np.isfinite(both) & (both > 0)]
    wide = False
    if len(both):
        lo, hi = float(both.min()), float(both.max())
        wide = hi / lo > 20  # a log axis only when the range spans decades
        bins = np.geomspace(lo, hi, 60) if wide else np.linspace(lo, hi if hi > lo else lo * 1.01, 60)
        ax.hist(sp, bins=bins, histtype="step", lw=1.8, color=SMALL_COLOUR, label="small model")
        ax.hist(lp, bins=bins, histtype="step", lw=1.8, color=LARGE_COLOUR, label="large model")
        if wide:
            ax.set_xscale("log")
            plain_log_axis(ax.xaxis, lo, hi)
    for key in ("ppl_low", "ppl_high"):
        if plot.lines.get(key) is not None:
            ax.axvline(plot.lines[key], color="black", ls="--", lw=1.3, label=plot.lines["ppl_label"] if key == "ppl_low" else None)
    ax.set_xlabel("perplexity" + (" (log scale)" if wide else ""))
    ax.set_ylabel("documents")
    ax.set_title("Perplexity of the small and the large model", fontsize=11)
    _legend_below(ax)
    return _save(fig, plot, "perplexity_hist.png", "Perplexities", "Per-document perplexity of both meta-models."
                 + (" Dashed: the perplexity gates of the selection." if plot.lines.get("ppl_low") is not None else ""))


def fig_loss_scatter(plot: Plot) -> dict[str, Any]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    sl, ll = plot.cols["small_loss"], plot.cols["large_loss"]
    sides = plot.sides(plot.scored)
    for idx, colour, label in sides:
        shown = plot.subsample(idx, len(sides))
        ax.scatter(sl[shown], ll[shown], s=6, alpha=0.45, color=colour, label=f"{label} ({len(idx):,})", linewidths=0)
    fin = plot.scored & np.isfinite(sl) & np.isfinite(ll)
    if fin.any():
        lo = float(min(sl[fin].min(), ll[fin].min()))
        hi = float(max(sl[fin].max(), ll[fin].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="equal loss (quality factor 1)")
        cut = plot.lines.get("log_qf")
        if cut is not None:
            ax.plot([lo, hi], [lo - cut, hi - cut], color="black", ls="--", lw=1.2, label=plot.lines["log_qf_label"])
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo - max(0.0, cut or 0.0) - 0.05 * (hi - lo), hi)
    ax.set_xlabel("small-model loss (nats/token)")
    ax.set_ylabel("large-model loss (nats/token)")
    ax.set_title("Small vs large model loss", fontsize=11)
    _legend_below(ax, ncol=2, markerscale=2)
    return _save(fig, plot, "loss_scatter.png", "Small vs large loss",
                 "Each point a document; below the grey diagonal the large model does better."
                 + (" Colours: kept and dropped." if plot.kept is not None else ""))


def _median_per_length_bin(n_tokens: np.ndarray, log_qf: np.ndarray) -> tuple[list[float], list[float]]:
    edges = np.unique(np.geomspace(n_tokens.min(), n_tokens.max() + 1, 16))
    which = np.digitize(n_tokens, edges)
    centres, medians = [], []
    for b in np.unique(which):
        sel = which == b
        if sel.sum() >= 5:
            centres.append(float(np.exp(np.mean(np.log(n_tokens[sel])))))
            medians.append(float(np.median(log_qf[sel])))
    return centres, medians


def fig_quality_factor_vs_length(plot: Plot) -> dict[str, Any]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    nt = plot.cols["n_tokens"]
    ok = plot.scored & np.isfinite(nt) & (nt > 0) & np.isfinite(plot.log_qf)
    sides = plot.sides(ok)
    for idx, colour, label in sides:
        shown = plot.subsample(idx, len(sides))
        ax.scatter(nt[shown], plot.log_qf[shown], s=6, alpha=0.45, color=colour, label=label, linewidths=0)
    if ok.sum() >= 20:
        centres, medians = _median_per_length_bin(nt[ok], plot.log_qf[ok])
        ax.plot(centres, medians, color="black", lw=1.8, label="median per length bin")
    if plot.lines.get("log_qf") is not None:
        ax.axhline(plot.lines["log_qf"], color="black", ls="--", lw=1.2, label=plot.lines["log_qf_label"])
    ax.set_xscale("log")
    if ok.any():
        lo, hi = float(nt[ok].min()), float(nt[ok].max())
        if hi > lo:
            ax.set_xlim(lo / 1.08, hi * 1.08)
            plain_log_axis(ax.xaxis, lo / 1.08, hi * 1.08)
    ax.set_xlabel("tokens scored (log scale)")
    ax.set_ylabel("log quality factor")
    ax.set_title("Quality factor against document length", fontsize=11)
    _legend_below(ax, ncol=2, markerscale=2)
    return _save(fig, plot, "quality_factor_vs_length.png", "Quality factor vs length",
                 "Does the score prefer long or short documents? (Truncated documents sit at the scoring --max-len.)")


def _boxplot(ax, data: list[np.ndarray]) -> None:
    try:  # matplotlib >= 3.10 says orientation=, older ones vert=
        ax.boxplot(data, orientation="horizontal", showfliers=False)
    except TypeError:
        ax.boxplot(data, vert=False, showfliers=False)


def _kept_bars(ax, names: list[str], rows: dict[str, Any], overall: float | None) -> None:
    """Fraction kept per group, with the range a random selection of the same size would keep."""
    y = np.arange(1, len(names) + 1)
    frac = [rows[g]["kept_fraction"] or 0.0 for g in names]
    ax.barh(y, frac, height=0.6, color=KEPT_COLOUR, label="kept by this selection")
    for i, g in zip(y, names):
        rng_ = rows[g].get("random_kept_range")
        if rng_:
            ax.plot(rng_, [i - 0.38, i - 0.38], color=RANDOM_COLOUR, lw=2.2, solid_capstyle="butt",
                    label="a random selection would keep (95 % range)" if i == 1 else None)
    if overall is not None:
        ax.axvline(overall, color=RANDOM_COLOUR, ls="--", lw=1.2, label=f"overall kept fraction {overall:.0%}")
    for i, f in zip(y, frac):
        if f >= LABEL_INSIDE_FROM:  # on the dark bar: white, inside its end
            ax.text(f - 0.015, i, f"{f:.0%}", va="center", ha="right", fontsize=9, color="white", fontweight="bold")
        else:
            ax.text(f + 0.012, i, f"{f:.0%}", va="center", ha="left", fontsize=9, color="#1d2330",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})  # over the dashed line: still readable
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(names) + 0.4, 0.3)  # first group on top, as in the table
    ax.set_xlabel("fraction kept")
    ax.set_title("Kept by the selection", fontsize=11)
    _legend_below(ax, ncol=1)


def fig_by_group(plot: Plot) -> dict[str, Any] | None:
    if not plot.group_field or not plot.groups:
        return None
    plt = _pyplot()
    names = [g for g, row in plot.groups["values"].items() if row["scored"]]
    if not names:
        return None
    has_sel = plot.kept is not None
    fig, axes = plt.subplots(1, 2 if has_sel else 1, figsize=(11 if has_sel else 7.5, 0.55 * len(names) + 2.2), squeeze=False)
    ax = axes[0, 0]
    groups = plot.cols["group"]
    _boxplot(ax, [plot.log_qf[plot.scored & (groups == g) & np.isfinite(plot.log_qf)] for g in names])
    ax.set_yticks(range(1, len(names) + 1), names)
    if not has_sel:
        ax.set_ylim(len(names) + 0.5, 0.5)  # first group on top, as in the table
    if plot.lines.get("log_qf") is not None:
        ax.axvline(plot.lines["log_qf"], color="black", ls="--", lw=1.2, label=plot.lines["log_qf_label"])
    ax.set_xlabel("log quality factor")
    ax.set_title(f"Log quality factor by {plot.group_field}", fontsize=11)
    _legend_below(ax, ncol=1)
    if has_sel:
        _kept_bars(axes[0, 1], names, plot.groups["values"], plot.groups["overall_kept_fraction"])
        ax.set_ylim(len(names) + 0.4, 0.3)  # the same rows as the bars beside it
    fig.tight_layout()
    return _save(fig, plot, "quality_factor_by_group.png", f"By {plot.group_field}",
                 f"Log quality factor for each value of the record field {plot.group_field!r}"
                 + (", and the fraction of each kept beside what a random selection of the same size would keep "
                    "(grey: its 95 % range; a bar outside it is a real preference of the selection)." if has_sel else "."),
                 wide=True)


def fig_distilled(plot: Plot) -> dict[str, Any] | None:
    """log QF against the distilled score `qf_distilled`, when records carry it."""
    d = plot.cols["qf_distilled"]
    ok = plot.scored & np.isfinite(d) & np.isfinite(plot.log_qf)
    if not ok.any():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    sides = plot.sides(ok)
    for idx, colour, label in sides:
        shown = plot.subsample(idx, len(sides))
        ax.scatter(d[shown], plot.log_qf[shown], s=6, alpha=0.45, color=colour, label=f"{label} ({len(idx):,})", linewidths=0)
    if plot.lines.get("log_qf") is not None:
        ax.axhline(plot.lines["log_qf"], color="black", ls="--", lw=1.2, label=plot.lines["log_qf_label"])
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("distilled score qf_distilled (probability of high quality)")
    ax.set_ylabel("log quality factor")
    rho = f"{plot.distilled_rho:.3f}" if plot.distilled_rho is not None else "undefined"
    ax.set_title(f"Quality factor vs its distilled classifier (Spearman ρ = {rho})", fontsize=11)
    _legend_below(ax, ncol=3, markerscale=2)
    return _save(fig, plot, "quality_factor_vs_distilled.png", "Quality factor vs distilled score",
                 f"Each point a document with both scores ({int(ok.sum()):,}). The distilled classifier ranks documents "
                 f"as the quality factor does to the degree of the Spearman rank correlation, {rho}.")


FIGURES: tuple[Callable[[Plot], dict[str, Any] | None], ...] = (
    fig_quality_factor_hist, fig_perplexity_hist, fig_loss_scatter, fig_quality_factor_vs_length, fig_distilled, fig_by_group,
)


def make_figures(plot: Plot) -> list[dict[str, Any]]:
    """Write every figure that has something to show; return [{'file', 'title', 'caption', 'png', 'wide'}]."""
    plot.out.mkdir(parents=True, exist_ok=True)
    return [f for f in (draw(plot) for draw in FIGURES) if f is not None]
