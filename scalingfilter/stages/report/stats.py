"""The numbers of the report, computed from the columns of `data.read_corpus` (no I/O, no plotting).

Invariants: fractions of a selection are over the scored pool (documents with a usable quality factor);
a group's "random" expectation is what a uniformly random selection of the same number of documents from
the same pool would keep of it: on average the overall kept fraction, with the central 95 % range of the
hypergeometric distribution (drawing without replacement).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalingfilter.errors import require
from scalingfilter.stages.select_choose import rank_interval
from scalingfilter.stages.report.data import Corpus

QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
DEFAULT_KEEP = 0.7  # the paper's keep fraction: where top-k would cut when no selection is given
QUANTITIES = ("small_loss", "large_loss", "small_ppl", "large_ppl", "quality_factor", "n_tokens", "n_chars")


def quantiles(x: np.ndarray) -> dict[str, float] | None:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return None
    out = {f"q{int(round(q * 100)):02d}": float(v) for q, v in zip(QUANTILES, np.quantile(x, QUANTILES))}
    out["mean"] = float(x.mean())
    out["std"] = float(x.std())
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[int, float | None]:
    """(documents with both values finite, Spearman rank correlation or None when undefined)."""
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return n, None
    require("scipy", "report", "scalingfilter report")
    from scipy.stats import spearmanr

    rho = float(spearmanr(x[ok], y[ok]).statistic)
    return n, rho if np.isfinite(rho) else None


def threshold_lines(manifest: dict[str, Any] | None, log_qf: np.ndarray, scored: np.ndarray) -> dict[str, Any]:
    """Where the figures draw the selection's cut: {'log_qf', 'log_qf_label'} for a quality-factor threshold,
    {'ppl_low', 'ppl_high', 'ppl_label'} for perplexity gates. Without a top-k or gating selection, the cut
    top-k would make at the paper's 70 % is drawn, for reference."""
    lines: dict[str, Any] = {}
    m = manifest or {}
    th = m.get("thresholds") or {}
    if m.get("method") == "top-k" and th.get("log_quality_factor") is not None:
        lines["log_qf"], lines["log_qf_label"] = th["log_quality_factor"], f"top-k threshold (keep {m['keep']:g})"
    if m.get("method") == "perplexity-gating" and th.get("large_ppl_low") is not None:
        lines["ppl_low"], lines["ppl_high"] = th["large_ppl_low"], th.get("large_ppl_high")
        lines["ppl_label"] = f"gates on the large model: {100 * (1 - m['keep']) / 2:g}th and {100 * (1 + m['keep']) / 2:g}th percentile"
        return lines
    if lines.get("log_qf") is None and scored.any():
        bounds = rank_interval(-log_qf, DEFAULT_KEEP)
        if bounds.kept:
            lines["log_qf"] = float(-bounds.upper[0])
            lines["log_qf_label"] = f"where top-k at keep {DEFAULT_KEEP:g} would cut (paper default)"
    return lines


def selection_summary(selection: dict[str, Any], directory: str, log_qf: np.ndarray, scored: np.ndarray) -> dict[str, Any]:
    m = selection["manifest"]
    kept = selection["kept"]
    out = {k: m.get(k) for k in ("method", "keep", "by", "seed", "temperature", "thresholds", "documents_selected",
                                 "kept_fraction_documents", "tokens_selected", "kept_fraction_tokens")}
    out["dir"] = directory
    out["mean_log_qf_kept"] = float(np.nanmean(log_qf[kept & scored])) if (kept & scored).any() else None
    out["mean_log_qf_dropped"] = float(np.nanmean(log_qf[~kept & scored])) if (~kept & scored).any() else None
    return out


def random_kept_range(group_size: int, pool: int, kept: int, coverage: float = 0.95) -> tuple[float, float]:
    """The central `coverage` range of the fraction of a group of `group_size` that a uniformly random choice
    of `kept` documents out of `pool` keeps (hypergeometric)."""
    require("scipy", "report", "scalingfilter report")
    from scipy.stats import hypergeom

    if group_size == 0:
        return (0.0, 0.0)
    dist = hypergeom(pool, kept, group_size)
    tail = (1 - coverage) / 2
    return float(dist.ppf(tail)) / group_size, float(dist.ppf(1 - tail)) / group_size


def group_stats(corpus: Corpus, field: str, kept: np.ndarray | None) -> dict[str, Any]:
    """Per value of `field`: documents, median log QF and, with a selection, the fraction kept beside what a
    random selection of the same size would keep (`random_kept_fraction`, `random_kept_range`)."""
    groups, scored, log_qf = corpus.cols["group"], corpus.cols["scored"], corpus.log_qf
    pool = int(scored.sum())
    n_kept = int((kept & scored).sum()) if kept is not None else None
    overall = n_kept / pool if kept is not None and pool else None
    values = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        ms = m & scored
        row: dict[str, Any] = {"documents": int(m.sum()), "scored": int(ms.sum()),
                               "median_log_qf": float(np.median(log_qf[ms])) if ms.any() else None}
        if kept is not None:
            row["kept"] = int((kept & ms).sum())
            row["kept_fraction"] = row["kept"] / row["scored"] if row["scored"] else None
            row["random_kept_fraction"] = overall
            row["random_kept_range"] = list(random_kept_range(row["scored"], pool, n_kept)) if row["scored"] else None
            lo, hi = row["random_kept_range"] or (None, None)
            row["beyond_random"] = (row["kept_fraction"] < lo or row["kept_fraction"] > hi) if row["scored"] else None
        values[g] = row
    return {"field": field, "overall_kept_fraction": overall, "values": values}


def pick_examples(log_qf: np.ndarray, scored: np.ndarray, threshold: float | None, n: int) -> dict[str, list[int]]:
    """Corpus positions of the n highest and n lowest log QF, and n around the threshold."""
    pos = np.flatnonzero(scored & np.isfinite(log_qf))
    if len(pos) == 0 or n == 0:
        return {}
    order = pos[np.lexsort((pos, -log_qf[pos]))]  # descending log qf, ties by position
    out = {"top": order[:n].tolist(), "bottom": order[::-1][:n].tolist()}
    if threshold is not None:
        i = int(np.searchsorted(-log_qf[order], -threshold, side="right"))  # first below the threshold
        half = max(1, n // 2)
        out["threshold"] = order[max(0, i - half): i + (n - half)].tolist()
    return out


def pick_gate_examples(large_ppl: np.ndarray, scored: np.ndarray, gates: tuple[float, float], n: int) -> list[int]:
    """About n/2 documents around each perplexity gate, on both sides."""
    pos = np.flatnonzero(scored & np.isfinite(large_ppl))
    order = pos[np.lexsort((pos, large_ppl[pos]))]
    half = max(1, n // 2)
    around: list[int] = []
    for bound in gates:
        i = int(np.searchsorted(large_ppl[order], bound, side="left"))
        around += order[max(0, i - half // 2 - half % 2): i + half // 2 + 1].tolist()
    return list(dict.fromkeys(around))


def pick_group_examples(corpus: Corpus, kept: np.ndarray | None, n: int, seed: int = 0) -> dict[str, dict[str, list[int]]]:
    """Per group: with a selection, a seeded random sample of n kept and n dropped documents (what each side
    of the cut looks like); without one, the n highest and n lowest log QF of the group."""
    groups, scored, log_qf = corpus.cols["group"], corpus.cols["scored"], corpus.log_qf
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[int]]] = {}
    for g in sorted(set(groups[scored].tolist())):
        ms = scored & (groups == g) & np.isfinite(log_qf)
        if kept is not None:
            sides = {"kept": np.flatnonzero(ms & kept), "dropped": np.flatnonzero(ms & ~kept)}
            picks = {k: sorted(rng.choice(v, min(n, len(v)), replace=False).tolist(), key=lambda p: -log_qf[p]) for k, v in sides.items()}
        else:
            pos = np.flatnonzero(ms)
            order = pos[np.lexsort((pos, -log_qf[pos]))]
            picks = {"highest": order[:n].tolist(), "lowest": order[::-1][:min(n, max(0, len(order) - n))][::-1].tolist()}
        out[g] = picks
    return out


def corpus_stats(corpus: Corpus, rejected: int | None) -> dict[str, Any]:
    """Counts and quantiles of every score over the scored documents."""
    c, scored = corpus.cols, corpus.cols["scored"]
    tok = c["n_tokens"]
    qs = {"log_quality_factor": quantiles(corpus.log_qf[scored])}
    qs.update({k: quantiles(c[k][scored]) for k in QUANTITIES})
    stats: dict[str, Any] = {
        "counts": {"documents": corpus.n, "scored": int(scored.sum()), "unscored": int(corpus.n - scored.sum()), "rejected": rejected,
                   "tokens_scored": int(np.nansum(tok[scored])), "truncated": int((c["truncated"] & scored).sum())},
        "truncated_fraction": float(c["truncated"][scored].mean()) if scored.any() else None,
        "unscored_reasons": dict(corpus.unscored_reasons.most_common()),
        "quantiles": qs,
    }
    stats["spearman_log_qf_vs_tokens"] = spearman(corpus.log_qf[scored], tok[scored])[1]
    n_distilled, rho = spearman(corpus.log_qf[scored], c["qf_distilled"][scored])
    if n_distilled:
        stats["distilled"] = {"documents": n_distilled, "spearman_log_qf_vs_qf_distilled": rho,
                              "quantiles": quantiles(c["qf_distilled"][scored])}
    return stats
