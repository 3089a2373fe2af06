"""`scalingfilter demo`: the whole path a user takes, on a corpus built from text the installation brings.

1. build the demo corpus (standard-library docstrings and help topics as prose, beside source code,
   licence texts and package index listings; see `scalingfilter.demo_corpus`);
2. score it with the bundled meta-model pair (or, while no bundled pair is installed, a randomly
   initialised pair built on the spot, and say so);
3. keep the top 70 % by quality factor (the paper's ScalingFilter), and the random baseline beside it;
4. write the report and print where it is.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

MARKER = ".scalingfilter-demo"
STEPS = ("corpus", "scored", "selected", "selected-random", "report", "report-random", "random-pair")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", "--output_dir", default="demo_out", help="where everything goes (default demo_out)")
    parser.add_argument("--pair", default="bundled",
                        help="bundled (default: the pair shipped with the package), gpt2 (downloads gpt2 and gpt2-large), "
                             "or a directory holding small/ and large/")
    parser.add_argument("--docs", type=int, default=400, help="documents in the demo corpus (default 400)")
    parser.add_argument("--keep", type=float, default=0.7, help="fraction kept (default 0.7, as the paper)")
    parser.add_argument("--max-len", type=int, default=512, help="tokens scored per document (default 512)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--seed", type=int, default=0, help="seed for the corpus sample and the random baseline")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _prepare(out: Path) -> None:
    """Make `out` ours: empty or an earlier demo's directory (whose steps are then replaced)."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SystemExit(f"scalingfilter demo: error: {str(out)!r} exists and is not an earlier demo's output; choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `scalingfilter demo`; it replaces its own subdirectories on the next run\n")
    for step in STEPS:
        if (out / step).exists():
            shutil.rmtree(out / step)


def resolve_pair(choice: str, out: Path, texts: list[str], max_len: int) -> tuple[str, str | None]:
    """(pair argument for `score`, a warning to show or None)."""
    if choice != "bundled":
        return choice, None
    try:
        from ..bundled import bundled_pair_dir

        found = bundled_pair_dir()
    except ImportError:
        found = None
    if found is not None:
        return str(found), None
    from ..testing import build_random_pair

    warning = ("NO BUNDLED PAIR IS INSTALLED: this demo scores with a pair of RANDOMLY INITIALISED models built just now "
               f"({out / 'random-pair'}). It shows the pipeline end to end, but the quality factors are noise: "
               "do not read anything into which documents are kept. Use --pair gpt2 (network) or --pair DIR for real scores.")
    _say("\n" + "!" * 100 + "\n" + warning + "\n" + "!" * 100 + "\n")
    build_random_pair(out / "random-pair", texts, vocab_size=1024, n_positions=max(max_len, 64))
    return str(out / "random-pair"), warning


def run(args: argparse.Namespace) -> int:
    from ..demo_corpus import build_demo_corpus
    from ..documents import iter_corpus
    from ..report import build_report
    from ..selection import format_manifest, select_corpus

    out = Path(args.output_dir)
    _prepare(out)
    t0 = time.time()

    _say(f"[1/4] building the demo corpus from text this installation brings ({args.docs} documents) ...")
    info = build_demo_corpus(out / "corpus", n_docs=args.docs, seed=args.seed)
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(info["kinds"].items()))
    _say(f"      {info['documents']} documents ({kinds}) in {out / 'corpus'}")

    texts = [r.text for r in iter_corpus(out / "corpus") if r.text]
    pair, warning = resolve_pair(args.pair, out, texts, args.max_len)
    _say(f"[2/4] scoring with the pair {pair} (max {args.max_len} tokens per document, {args.device}) ...")
    try:
        from ..pipeline import score_corpus
    except ImportError as exc:
        print(f"scalingfilter demo: error: the scoring engine is not available ({exc})", file=sys.stderr)
        return 1
    summary = score_corpus(str(out / "corpus"), str(out / "scored"), pair=pair, max_len=args.max_len, device=args.device,
                           force_overwrite=True, show_progress=not args.no_progress)
    _say(f"      scored {summary.get('documents', '?')} documents in {summary.get('time_s', '?')} s ({summary.get('tokens_per_s', '?')} tokens/s)")

    _say(f"[3/4] selecting the top {args.keep:.0%} by quality factor (and a random {args.keep:.0%} to compare) ...")
    manifest = select_corpus(out / "scored", out / "selected", keep=args.keep, method="top-k", force_overwrite=True)
    random_manifest = select_corpus(out / "scored", out / "selected-random", keep=args.keep, method="random", seed=args.seed, force_overwrite=True)
    _say("      " + format_manifest(manifest).replace("\n", "\n      "))

    _say("[4/4] writing the report ...")
    notes = [warning] if warning else []
    notes.append("Demo corpus: Python standard-library docstrings and help topics (prose) beside source code, licence texts and "
                 "package RECORD listings (machine-like text), all from this installation. The breakdown by kind shows which the filter keeps.")
    stats = build_report(out / "scored", out / "report", selected_dir=out / "selected", group_field="kind", notes=notes)
    rstats = build_report(out / "scored", out / "report-random", selected_dir=out / "selected-random", group_field="kind",
                          notes=notes + ["This is the random baseline: the same number of documents drawn uniformly."])

    _say("\nkept by kind           top-k    random")
    for kind, row in stats["groups"]["values"].items():
        r = rstats["groups"]["values"][kind]
        if row["kept_fraction"] is None:
            continue
        _say(f"  {kind:<18} {row['kept_fraction']:>7.0%} {r['kept_fraction']:>9.0%}   ({row['documents']} documents)")
    if warning:
        _say("\n(random models: the top-k column is as arbitrary as the random one)")
    report = (out / "report" / "report.html").resolve()
    _say(f"\ndone in {time.time() - t0:.0f} s")
    _say(f"report:          {report}")
    _say(f"random baseline: {(out / 'report-random' / 'report.html').resolve()}")
    _say(f"kept documents:  {(out / 'selected').resolve()} (manifest: selection.json)")
    del random_manifest
    return 0
