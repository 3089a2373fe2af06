"""The demo: the whole path a user takes, on a corpus built from text the installation brings.

1. build the demo corpus (standard-library docstrings and help topics as prose, beside source code,
   licence texts and package index listings; see `scalingfilter.stages.demo_corpus`);
2. score it with the bundled meta-model pair (or, while no bundled pair is installed, a randomly
   initialised pair built on the spot, and say so);
3. keep the top 70 % by quality factor (the paper's ScalingFilter), and the random baseline beside it;
4. write the reports.

`run_demo` is the API; `scalingfilter demo` (commands/demo.py) parses flags and calls it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scalingfilter.errors import UsageError

MARKER = ".scalingfilter-demo"
STEPS = ("corpus", "scored", "selected", "selected-random", "report", "report-random", "random-pair")
CORPUS_NOTE = ("Demo corpus: Python standard-library docstrings and help topics (prose) beside source code, licence texts and "
               "package RECORD listings (machine-like text), all from this installation. The breakdown by kind shows which the filter keeps.")


@dataclass
class DemoConfig:
    output_dir: str = "demo_out"
    pair: str = "bundled"
    docs: int = 400
    keep: float = 0.7
    max_len: int | None = None  # None: the pair's own scoring settings (the bundled pair: 512 tokens)
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


def prepare_output(out: Path) -> None:
    """Make `out` ours: empty or an earlier demo's directory (whose steps are then replaced)."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UsageError(f"{str(out)!r} exists and is not an earlier demo's output; choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `scalingfilter demo`; it replaces its own subdirectories on the next run\n")
    for step in STEPS:
        if (out / step).exists():
            shutil.rmtree(out / step)


def resolve_demo_pair(choice: str, out: Path, texts: list[str], max_len: int | None, say: Callable[[str], None]) -> tuple[str, str | None]:
    """(pair argument for `score`, a warning to show or None)."""
    if choice != "bundled":
        return choice, None
    from scalingfilter.bundled import bundled_pair_dir

    found = bundled_pair_dir()
    if found is not None:
        return str(found), None
    from scalingfilter.testing import build_random_pair

    warning = ("NO BUNDLED PAIR IS INSTALLED: this demo scores with a pair of RANDOMLY INITIALISED models built just now "
               f"({out / 'random-pair'}). It shows the pipeline end to end, but the quality factors are noise: "
               "do not read anything into which documents are kept. Use --pair gpt2 (network) or --pair DIR for real scores.")
    say("\n" + "!" * 100 + "\n" + warning + "\n" + "!" * 100 + "\n")
    build_random_pair(out / "random-pair", texts, vocab_size=1024, n_positions=max(max_len or 512, 64))
    return str(out / "random-pair"), warning


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Corpus, score, select (top-k and random), reports; returns what the steps returned and where."""
    from scalingfilter.stages.demo_corpus import build_demo_corpus
    from scalingfilter.io.walk import iter_corpus
    from scalingfilter.stages.score import score_corpus
    from scalingfilter.stages.report import build_report, require_extras
    from scalingfilter.stages.select import format_manifest, select_corpus

    require_extras("scalingfilter demo")  # its last step is the report: say so before building and scoring
    out = Path(cfg.output_dir)
    prepare_output(out)
    t0 = time.time()
    say(f"[1/4] building the demo corpus from text this installation brings ({cfg.docs} documents) ...")
    info = build_demo_corpus(out / "corpus", n_docs=cfg.docs, seed=cfg.seed)
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(info["kinds"].items()))
    say(f"      {info['documents']} documents ({kinds}) in {out / 'corpus'}")

    texts = [r.text for r in iter_corpus(out / "corpus") if r.text]
    pair, warning = resolve_demo_pair(cfg.pair, out, texts, cfg.max_len, say)
    say(f"[2/4] scoring with the pair {pair} ({cfg.device}) ...")
    summary = score_corpus(str(out / "corpus"), str(out / "scored"), pair=pair, max_len=cfg.max_len, device=cfg.device,
                           force_overwrite=True, show_progress=cfg.progress)
    say(f"      scored {summary['documents']} documents (max {summary['settings']['max_len']} tokens each) in "
        f"{summary['time_s']} s ({summary['tokens_per_s']} tokens/s)")

    say(f"[3/4] selecting the top {cfg.keep:.0%} by quality factor (and a random {cfg.keep:.0%} to compare) ...")
    manifest = select_corpus(out / "scored", out / "selected", keep=cfg.keep, method="top-k", force_overwrite=True)
    random_manifest = select_corpus(out / "scored", out / "selected-random", keep=cfg.keep, method="random", seed=cfg.seed, force_overwrite=True)
    say("      " + format_manifest(manifest).replace("\n", "\n      "))

    say("[4/4] writing the report ...")
    notes = ([warning] if warning else []) + [CORPUS_NOTE]
    stats = build_report(out / "scored", out / "report", selected_dir=out / "selected", group_field="kind", notes=notes)
    rstats = build_report(out / "scored", out / "report-random", selected_dir=out / "selected-random", group_field="kind",
                          notes=notes + ["This is the random baseline: the same number of documents drawn uniformly."])
    return {"corpus": info, "summary": summary, "manifest": manifest, "random_manifest": random_manifest,
            "stats": stats, "random_stats": rstats, "warning": warning, "seconds": time.time() - t0,
            "report": (out / "report" / "report.html").resolve(), "random_report": (out / "report-random" / "report.html").resolve(),
            "selected": (out / "selected").resolve()}
