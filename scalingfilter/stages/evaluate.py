"""Does a score separate good documents from bad ones? AUROC and pair win rate against labels.

`evaluate_dir` reads a scored corpus (the output of `scalingfilter score`) and, for the quality factor
and the baselines below, computes
  - AUROC against a binary label (the higher label value is the positive class): the probability that
    a random positive document scores higher than a random negative one, ties counting one half
    (the Mann-Whitney U from average ranks, (R+ - n+(n+ + 1)/2) / (n+ n-), with scipy's rankdata: tied
    scores share their ranks, which counts each tied positive/negative pair one half; the tests check it
    against counting every pair). scipy is the "eval" extra: `pip install 'scalingfilter[eval]'`.
  - the pair win rate where documents come in groups (a `pair` field): over every two documents of a
    group with different labels, the fraction in which the higher-labelled one scores higher (ties 1/2).

Scores, each oriented so that higher means "better" as its filter uses it:
  quality_factor   PPL_small / PPL_large (ScalingFilter; higher is better)
  qf_distilled     a distilled fastText classifier's score of the quality factor (higher = keep); shown
                   only when records carry it (OPTIONAL_METRICS)
  large_ppl        large-model perplexity, lower is better (perplexity gating's signal)
  small_ppl        small-model perplexity, lower is better
  length           document length in characters, longer is better
Documents without a score (null, e.g. unscorable) are left out of that score's figures and counted.

Only a finished `scalingfilter score` output is evaluated (`jobs.state.ScoredDir`): a directory without
summary.json (never scored, still being scored, or scored in node parts and not yet summarised) is refused
with one line saying what to run.
"""

from __future__ import annotations

import collections
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from scalingfilter.io.walk import iter_corpus
from scalingfilter.errors import InputError, require
from scalingfilter.jobs.state import ScoredDir

EXTRA = "eval"  # scipy (rankdata), for the AUROC: pip install 'scalingfilter[eval]'

# name -> (description, function of the record giving the raw value, sign: +1 higher is better, -1 lower is better)
METRICS: dict[str, tuple[str, Callable[[dict, str | None], Any], int]] = {
    "quality_factor": ("quality factor PPL_small/PPL_large (higher is better)", lambda d, t: d.get("quality_factor"), 1),
    "qf_distilled": ("distilled fastText quality score (higher is better)", lambda d, t: d.get("qf_distilled"), 1),
    "large_ppl": ("large-model perplexity (lower is better)", lambda d, t: d.get("large_ppl"), -1),
    "small_ppl": ("small-model perplexity (lower is better)", lambda d, t: d.get("small_ppl"), -1),
    "length": ("document length in characters (longer is better)", lambda d, t: None if t is None else len(t), 1),
}
# Reported only when at least one labelled record carries a value.
OPTIONAL_METRICS = ("qf_distilled",)


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def auroc(scores: Iterable[float], labels: Iterable[Any]) -> float:
    """AUROC of `scores` for the positive class = the larger of the two label values; ties count 1/2.
    NaN if there are not two label values with at least one document each."""
    require("scipy", EXTRA, "AUROC (scalingfilter.stages.evaluate.auroc)")
    from scipy.stats import rankdata

    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(labels))
    values = np.unique(y)
    if len(values) != 2:
        if len(values) > 2:
            raise ValueError(f"AUROC needs binary labels; got {len(values)} distinct values")
        return float("nan")
    positive = y == values[1]
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    rank_sum = float(rankdata(s, method="average")[positive].sum())  # ties share the mean of their ranks
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pair_win_rate(scores: Iterable[float], labels: Iterable[Any], groups: Iterable[Any]) -> tuple[float, int]:
    """(win rate, number of compared pairs): over every two documents of a group with different labels,
    the fraction in which the higher-labelled one scores higher, ties 1/2. NaN if no pair."""
    by_group: dict[Any, list[tuple[float, Any]]] = {}
    for s, y, g in zip(scores, labels, groups):
        if g is None:
            continue
        by_group.setdefault(g, []).append((s, y))
    wins, n = 0.0, 0
    for members in by_group.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                (si, yi), (sj, yj) = members[i], members[j]
                if yi == yj:
                    continue
                hi, lo = (si, sj) if yi > yj else (sj, si)
                wins += 1.0 if hi > lo else 0.5 if hi == lo else 0.0
                n += 1
    return (wins / n if n else float("nan")), n


@dataclass
class MetricResult:
    name: str
    description: str
    n: int  # documents with a score and a label
    missing: int  # documents with a label but no score
    auroc: float
    pair_win: float | None
    pairs: int | None

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def evaluate_records(records: Iterable[tuple[dict, str | None]], label_field: str = "label",
                     pair_field: str | None = "pair", metrics: Iterable[str] | None = None) -> dict[str, Any]:
    """`records`: (data, text) tuples of scored documents. Returns a dict with `metrics` (a list of MetricResult
    dicts), `documents`, `labelled`, `label_values`, `pairs_field_present`. `metrics`: names of METRICS; by
    default all of them, the OPTIONAL_METRICS only where some labelled record has a value."""
    explicit = metrics is not None
    metrics = list(METRICS if metrics is None else metrics)
    rows: list[tuple[Any, Any, list[float | None]]] = []
    total = 0
    unlabelled: collections.Counter[str] = collections.Counter()  # why a document is left out: said, not silent
    for data, text in records:
        total += 1
        if not isinstance(data, dict):
            unlabelled["not a JSON object"] += 1
            continue
        label = data.get(label_field)
        if label is None or isinstance(label, (dict, list)):
            unlabelled["no label" if label_field not in data else "null label" if label is None else "label not a single value"] += 1
            continue
        if isinstance(label, bool):  # JSON true/false as 1/0
            label = int(label)
        group = data.get(pair_field) if pair_field else None
        if isinstance(group, (dict, list)):
            group = str(group)
        rows.append((label, group, [_finite(METRICS[m][1](data, text)) for m in metrics]))
    if not rows:
        raise InputError(f"no document has a {label_field!r} field")
    label_values = sorted({r[0] for r in rows}, key=lambda v: (str(type(v)), v))
    if len(label_values) != 2:
        raise InputError(f"field {label_field!r} must take exactly two values; found {len(label_values)}: {label_values[:10]}")
    has_pairs = any(r[1] is not None for r in rows)
    results = []
    for k, m in enumerate(metrics):
        if not explicit and m in OPTIONAL_METRICS and all(r[2][k] is None for r in rows):
            continue
        desc, _, sign = METRICS[m]
        kept = [(sign * r[2][k], r[0], r[1]) for r in rows if r[2][k] is not None]
        if kept:
            s, y, g = zip(*kept)
            a = auroc(s, y)
            pw, np_ = pair_win_rate(s, y, g) if has_pairs else (None, None)
        else:
            a, pw, np_ = float("nan"), (float("nan") if has_pairs else None), (0 if has_pairs else None)
        results.append(MetricResult(m, desc, len(kept), len(rows) - len(kept), a, pw, np_))
    return {"documents": total, "labelled": len(rows), "unlabelled": dict(unlabelled.most_common()),
            "label_field": label_field, "label_values": label_values,
            "positive_label": label_values[1], "pair_field": pair_field if has_pairs else None,
            "metrics": [r.as_dict() for r in results]}


def evaluate_dir(scored_dir: str | os.PathLike, label_field: str = "label", pair_field: str | None = "pair",
                 text_field: str = "text") -> dict[str, Any]:
    """`evaluate_records` over every data file of a scored output directory (rejects/ excluded)."""
    require("scipy", EXTRA, "scalingfilter evaluate")  # before reading anything: the AUROC needs it
    scored = ScoredDir.open(scored_dir)  # finished, with summary.json and data files: or one line saying what to run
    scored.require_summary("evaluate")
    scored.files()
    recs = ((r.data, r.text) for r in iter_corpus(scored_dir, text_field, scored=True) if r.data is not None)
    result = evaluate_records(recs, label_field, pair_field)
    result["input_dir"] = str(scored_dir)
    return result


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of `evaluate_*`'s result."""
    has_pairs = result.get("pair_field") is not None
    head = ["score", "AUROC", "documents"] + (["pair win rate", "pairs"] if has_pairs else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in result["metrics"]:
        cells = [m["description"], _fmt(m["auroc"]), f"{m['n']}" + (f" ({m['missing']} unscored)" if m["missing"] else "")]
        if has_pairs:
            cells += [_fmt(m["pair_win"]), str(m["pairs"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
