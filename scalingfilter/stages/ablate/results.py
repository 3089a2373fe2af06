"""ablate's outputs: the results dictionary (results.json), its Markdown table (results.md) and its page
(results.html, one self-contained file: figures embedded as PNG data URIs, the report's stylesheet inlined).

Invariants:
  - every number comes from `stats` applied to `ItemScores` (per arm: a list over seeds, position = seed);
    the same inputs give the same file bytes (the bootstrap is seeded);
  - a metric is compared only where every seed of every arm has it; arms are paired with `random` seed by seed;
  - a metric the positive control does not separate (clean arm not better than junk with an interval that
    excludes 0) is marked uninformative: its differences are still written to results.json, but the table and
    the page say "failed the control" instead of a verdict, so no filter is ranked by it;
  - the page judges in words (the verdicts), never in colour: arms are drawn in neutral colours.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from scalingfilter.errors import InputError, require
from scalingfilter.io.storage import write_bytes_atomic, write_json_atomic
from scalingfilter.stages.ablate.items import ItemScores
from scalingfilter.stages.ablate.items import higher_is_better
from scalingfilter.stages.ablate.stats import CONFIDENCE, control_separation, paired_difference, seed_summary

RANDOM_ARM = "random"
RESULTS_JSON, RESULTS_MD, RESULTS_HTML = "results.json", "results.md", "results.html"
TEMPLATES = Path(__file__).parent / "templates"
REPORT_TEMPLATES = Path(__file__).parent.parent / "report" / "templates"  # the report's stylesheet, shared
METRIC_ORDER = ("blimp_accuracy", "arc_easy_accuracy", "arc_easy_accuracy_norm", "lambada_accuracy", "lambada_bpb", "heldout_bpb")
FAILED_CONTROL = "failed the control"
N_BOOT, BOOT_SEED = 2000, 0

STATISTICS = {
    "confidence": CONFIDENCE,
    "per_arm": "mean over seeds; ci95: Student t interval over seeds (none with one seed)",
    "vs_random": "arm - random, paired by seed and by item; ci95: sqrt(t^2 * var over seeds / S + z^2 * var of the shared "
                 "item sample), the item part from a bootstrap over items resampled within groups "
                 f"({N_BOOT} replicates, seed {BOOT_SEED}); verdict in the metric's direction, 'no difference detected' "
                 "when the interval holds 0",
    "control": "clean - junk as vs_random; informative when the interval excludes 0 with the clean arm better",
}


def metric_key(name: str) -> tuple[int, str]:
    """Display order: the benchmarks' headline metrics, each BLiMP field right after blimp_accuracy, then the rest."""
    if name in METRIC_ORDER:
        return (2 * METRIC_ORDER.index(name), "")
    if name.startswith("blimp_accuracy_"):
        return (1, name)
    return (2 * len(METRIC_ORDER), name)


def _metrics_of(per_arm: dict[str, list[dict[str, ItemScores]]]) -> list[str]:
    if not per_arm:
        raise InputError("no arm to report")
    names: set[str] = set()
    for arm, seeds in per_arm.items():
        if not seeds:
            raise InputError(f"arm {arm!r} has no finished seed")
        for s in seeds:
            names |= set(s)
    for arm, seeds in per_arm.items():
        for i, s in enumerate(seeds):
            missing = sorted(names - set(s), key=metric_key)
            if missing:
                raise InputError(f"arm {arm!r} seed {i} lacks metric(s) {', '.join(missing)} that other models have: "
                                 "every model must be evaluated on the same eval sets")
    return sorted(names, key=metric_key)


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def build_results(per_arm: dict[str, list[dict[str, ItemScores]]], untrained: dict[str, ItemScores], chance: dict[str, float],
                  arm_info: dict[str, dict[str, Any]], control: tuple[str, str] | None, settings: dict[str, Any],
                  n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict[str, Any]:
    """The results.json dictionary (see the module docstring and docs of `ablate`)."""
    metrics = _metrics_of(per_arm)
    direction = {m: higher_is_better(m) for m in metrics}
    control_out = None
    if control is not None:
        clean, junk = control
        for arm in control:
            if arm not in per_arm:
                raise InputError(f"control arm {arm!r} was not trained (arms: {', '.join(per_arm)})")
        separation = {m: control_separation([s[m] for s in per_arm[clean]], [s[m] for s in per_arm[junk]],
                                            n_boot=n_boot, seed=seed, higher_is_better=direction[m]) for m in metrics}
        control_out = {"clean": clean, "junk": junk, "metrics": separation,
                       "uninformative": [m for m in metrics if not separation[m]["informative"]]}
    uninformative = set(control_out["uninformative"]) if control_out else set()

    arms: dict[str, Any] = {}
    base = per_arm.get(RANDOM_ARM)
    for arm, seeds in per_arm.items():
        entry: dict[str, Any] = {"seeds": len(seeds),
                                 "metrics": {m: seed_summary([s[m].value() for s in seeds]) for m in metrics}}
        if base is not None and arm != RANDOM_ARM:
            if len(seeds) != len(base):
                raise InputError(f"arm {arm!r} has {len(seeds)} seed(s) and {RANDOM_ARM!r} {len(base)}: "
                                 "the paired comparison needs the same seeds (rerun to finish the missing ones)")
            entry["vs_random"] = {m: paired_difference([s[m] for s in seeds], [s[m] for s in base], n_boot=n_boot, seed=seed,
                                                       higher_is_better=direction[m]) for m in metrics}
        clash = set(entry) & set(arm_info.get(arm, {}))
        if clash:
            raise InputError(f"arm_info of {arm!r} uses reserved key(s) {', '.join(sorted(clash))}")
        entry.update(arm_info.get(arm, {}))
        arms[arm] = entry
    return {
        "metrics": {m: {"higher_is_better": direction[m], "informative": None if control_out is None else m not in uninformative}
                    for m in metrics},
        "arms": arms,
        "baselines": {"chance": {m: _finite_or_none(chance.get(m)) for m in metrics},
                      "untrained": {m: _finite_or_none(untrained[m].value()) if m in untrained else None for m in metrics}},
        "control": control_out,
        "statistics": {**STATISTICS, "n_boot": n_boot, "seed": seed},
        "settings": settings,
    }


# --- text -------------------------------------------------------------------------------------------------------

def num(v: float | None, signed: bool = False) -> str:
    """Four decimals (accuracies and bits per byte alike, so small differences stay visible); '–' for nothing."""
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def interval(ci: list[float] | None, signed: bool = False) -> str:
    return "" if ci is None else f"[{num(ci[0], signed)}, {num(ci[1], signed)}]"


def metric_header(results: dict[str, Any], m: str) -> str:
    info = results["metrics"][m]
    arrow = "↑" if info["higher_is_better"] else "↓"
    return f"{m} {arrow}" + (f" ({FAILED_CONTROL})" if info["informative"] is False else "")


def difference_words(results: dict[str, Any], m: str, diff: dict[str, Any]) -> str:
    """'+0.0123 [-0.0020, +0.0266]: no difference detected' (or 'failed the control' instead of the verdict)."""
    words = "not used: " + FAILED_CONTROL if results["metrics"][m]["informative"] is False else diff["verdict"]
    return f"{num(diff['mean'], True)} {interval(diff['ci95'], True)}: {words}"


def legend_lines(results: dict[str, Any]) -> list[str]:
    seeds = sorted({a["seeds"] for a in results["arms"].values()})
    lines = [f"Each cell: mean over {'/'.join(map(str, seeds))} seed(s) [95 % Student t interval over seeds; none with one seed]. "
             f"'vs random': the paired difference arm − random (same seeds, same items), its 95 % interval over items and "
             f"seeds, and what it says in the metric's direction (↑ higher is better, ↓ lower is better); "
             f"'no difference detected' when the interval holds 0. Chance: a model that guesses; untrained: the proxy "
             f"model at initialisation."]
    c = results["control"]
    if c is None:
        lines.append("No positive control was run: no metric is known to separate clean text from junk at this budget.")
    else:
        bad = c["uninformative"]
        lines.append(f"Positive control ({c['clean']} − {c['junk']}): "
                     + (f"{', '.join(bad)} did not separate clean text from junk at this budget: shown, but "
                        f"ranking nothing ({FAILED_CONTROL})."
                        if bad else "every metric separated clean text from junk."))
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_markdown(results: dict[str, Any]) -> str:
    """One table: rows chance, untrained, each arm; columns the metrics; then the legend."""
    metrics = list(results["metrics"])
    base = results["baselines"]
    rows = ["| | " + " | ".join(_md_cell(metric_header(results, m)) for m in metrics) + " |",
            "|---|" + "---|" * len(metrics),
            "| chance | " + " | ".join(num(base["chance"][m]) for m in metrics) + " |",
            "| untrained | " + " | ".join(num(base["untrained"][m]) for m in metrics) + " |"]
    for arm, a in results["arms"].items():
        cells = []
        for m in metrics:
            s = a["metrics"][m]
            cell = f"{num(s['mean'])} {interval(s['ci95'])}".strip()
            if "vs_random" in a:
                cell += f"<br>vs random {difference_words(results, m, a['vs_random'][m])}"
            cells.append(_md_cell(cell))
        rows.append(f"| {_md_cell(arm)} ({a['seeds']} seed{'s' if a['seeds'] != 1 else ''}) | " + " | ".join(cells) + " |")
    out = "\n".join(rows) + "\n\n" + "\n\n".join(legend_lines(results)) + "\n"
    c = results["control"]
    if c is not None:
        out += (f"\n| positive control: {_md_cell(c['clean'])} − {_md_cell(c['junk'])} | difference [95 % interval] | separates |\n|---|---|---|\n"
                + "".join(f"| {m} | {num(d['mean'], True)} {interval(d['ci95'], True)} | {'yes' if d['informative'] else 'no'} |\n"
                          for m, d in c["metrics"].items()))
    return out


# --- the page ---------------------------------------------------------------------------------------------------

ARM_COLOUR, RANDOM_COLOUR, FADED_COLOUR = "#2f5f98", "#4a4a4a", "#9ca3af"
CHANCE_COLOUR, UNTRAINED_COLOUR = "#6b7280", "#7b3294"


def _reference_lines(ax, refs: list[tuple[str, float | None, str, str]], lo: float, hi: float) -> None:
    """Vertical reference lines (chance, untrained) inside the arms' range widened by 2 spans; one further away
    (an untrained model's bits per byte dwarf the arms' differences) is named at the edge instead."""
    span = max(hi - lo, 1e-9)
    left, right = lo - 0.08 * span, hi + 0.08 * span
    near = [v for _, v, _, _ in refs if v is not None and lo - 2 * span <= v <= hi + 2 * span]
    if near:
        left, right = min(left, min(near) - 0.05 * span), max(right, max(near) + 0.05 * span)
    ax.set_xlim(left, right)
    for label, v, colour, style in refs:
        if v is None:
            continue
        if left <= v <= right:
            ax.axvline(v, color=colour, linestyle=style, linewidth=1.2, label=f"{label} {num(v)}")
        else:
            at_right = v > right
            ax.annotate(f"{label} {num(v)} {'→' if at_right else '←'}", xy=(1 if at_right else 0, 1.01), xycoords="axes fraction",
                        ha="right" if at_right else "left", va="bottom", fontsize=8, color=colour)


def metric_figure(results: dict[str, Any], m: str) -> bytes:
    """One metric: each arm's mean with its interval over seeds and its seeds as ticks (top) and, with a random
    arm, the paired difference from random with its interval (bottom). PNG bytes, sized to stay legible when a
    phone shows it at 350 px."""
    matplotlib = require("matplotlib", "ablate", "scalingfilter ablate")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results["arms"])
    informative = results["metrics"][m]["informative"] is not False
    diffs = [a for a in arms if "vs_random" in results["arms"][a]]
    heights = [len(arms) + 1.6] + ([len(diffs) + 0.6] if diffs else [])  # + room for the legend below the top axes
    fig, axes = plt.subplots(len(heights), 1, figsize=(4.8, 0.9 + 0.32 * sum(heights)), layout="constrained",
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    ax = axes[0][0]
    ys = list(range(len(arms)))[::-1]
    lows, highs = [], []
    for y, arm in zip(ys, arms):
        s = results["arms"][arm]["metrics"][m]
        lo, hi = s["ci95"] or (s["mean"], s["mean"])
        lows.append(min(lo, *s["per_seed"]))
        highs.append(max(hi, *s["per_seed"]))
        colour = (RANDOM_COLOUR if arm == RANDOM_ARM else ARM_COLOUR) if informative else FADED_COLOUR
        ax.errorbar([s["mean"]], [y], xerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o", color=colour, capsize=3, markersize=5, zorder=3)
        ax.plot(s["per_seed"], [y] * len(s["per_seed"]), "|", color=colour, alpha=0.55, markersize=10)
    b = results["baselines"]
    _reference_lines(ax, [("chance", b["chance"][m], CHANCE_COLOUR, "--"), ("untrained", b["untrained"][m], UNTRAINED_COLOUR, ":")],
                     min(lows), max(highs))
    direction = "higher is better" if results["metrics"][m]["higher_is_better"] else "lower is better"
    # a figure title (not an axes one) so that long arm labels on the left leave it room
    fig.suptitle(f"{m} ({direction})" + ("" if informative else f"\n{FAILED_CONTROL}: ranks nothing"), fontsize=10.5, x=0.02, ha="left")
    _arm_axis(ax, ys, arms)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False, fontsize=9.5, borderaxespad=0)
    if diffs:
        ax2 = axes[1][0]
        ys2 = list(range(len(diffs)))[::-1]
        for y, arm in zip(ys2, diffs):
            d = results["arms"][arm]["vs_random"][m]
            ax2.errorbar([d["mean"]], [y], xerr=[[d["mean"] - d["ci95"][0]], [d["ci95"][1] - d["mean"]]], fmt="o",
                         color=ARM_COLOUR if informative else FADED_COLOUR, capsize=3, markersize=5)
        ax2.axvline(0, color=RANDOM_COLOUR, linewidth=1)
        ax2.set_title(f"minus {RANDOM_ARM} (95 % interval)", fontsize=10, loc="left")
        _arm_axis(ax2, ys2, diffs)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    return buf.getvalue()


def _arm_axis(ax, ys: list[int], arms: list[str]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # the axis is narrow: few labels, none touching
    ax.set_yticks(ys, arms, fontsize=10)
    ax.set_ylim(-0.6, len(arms) - 0.4)
    ax.tick_params(axis="x", labelsize=9.5)
    ax.grid(axis="x", color="#e5e7eb")
    ax.set_axisbelow(True)


LABELS = {"documents": "documents kept", "trained_documents": "documents trained on", "characters": "characters",
          "tokens": "tokens", "epochs": "epochs of the budget", "short_by": "short of the keep fraction by",
          "heldout_excluded": "held out (not trained on)", "by_source": "Documents kept, by source",
          "heuristics_drop_reasons": "Documents the heuristics dropped, by reason"}


def arm_tables(results: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """What arm_info holds, for the page: (scalar keys, {key: {arm: value}}) and the dict-valued keys as
    {key: {"columns": [...], "rows": {arm: {column: value}}}}."""
    reserved = {"seeds", "metrics", "vs_random"}
    scalars: dict[str, dict[str, Any]] = {}
    tables: dict[str, dict[str, Any]] = {}
    for arm, a in results["arms"].items():
        for k, v in a.items():
            if k in reserved:
                continue
            if isinstance(v, dict):
                t = tables.setdefault(k, {"columns": [], "rows": {}})
                t["rows"][arm] = v
                t["columns"] += [c for c in v if c not in t["columns"]]
            else:
                scalars.setdefault(k, {})[arm] = v
    return list(scalars), scalars, tables


def _plain(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def render_html(results: dict[str, Any]) -> str:
    jinja2 = require("jinja2", "ablate", "scalingfilter ablate")
    import markupsafe  # jinja2's own dependency
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([str(TEMPLATES), str(REPORT_TEMPLATES)]), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=num, interval=interval, plain=_plain, b64=lambda data: base64.b64encode(data).decode("ascii"),
                       breakable=lambda name: markupsafe.Markup(re.sub(r"([+:/_])", r"\1<wbr>", str(markupsafe.escape(name)))))
    figures = [{"metric": m, "png": metric_figure(results, m)} for m in results["metrics"]]
    keys, scalars, tables = arm_tables(results)
    return env.get_template("ablate.html.j2").render(
        r=results, figures=figures, legend=legend_lines(results), header=lambda m: metric_header(results, m),
        difference=lambda m, d: difference_words(results, m, d), arm_keys=keys, arm_scalars=scalars, arm_dicts=tables,
        labels=LABELS, failed=FAILED_CONTROL)


def write_outputs(out_dir: str | Path, results: dict[str, Any]) -> dict[str, Path]:
    """results.json, results.md and results.html in `out_dir`, each written atomically. Returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / RESULTS_JSON, "markdown": out / RESULTS_MD, "html": out / RESULTS_HTML}
    write_json_atomic(paths["json"], results)
    write_bytes_atomic(paths["markdown"], format_markdown(results).encode("utf-8"))
    write_bytes_atomic(paths["html"], render_html(results).encode("utf-8"))
    return paths
