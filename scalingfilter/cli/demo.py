"""`scalingfilter demo`: score, select and report a demo corpus built from text the installation brings
(the steps are `scalingfilter.stages.demo.run_demo`; this module parses flags and prints)."""

from __future__ import annotations

import argparse

from scalingfilter.stages.demo import DemoConfig
from scalingfilter.cli.flags import flag, fraction, int_at_least, non_negative_int

D = DemoConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flag(parser, "output-dir", default=D.output_dir, help=f"where everything goes (default {D.output_dir})")
    flag(parser, "pair", default=D.pair,
         help="bundled (default: the pair shipped with the package), gpt2 (downloads gpt2 and gpt2-large), "
              "or a directory holding small/ and large/")
    flag(parser, "docs", type=int_at_least(10), default=D.docs, help=f"documents in the demo corpus (default {D.docs})")
    flag(parser, "keep", type=fraction, default=D.keep, help=f"fraction kept (default {D.keep}, as the paper)")
    flag(parser, "max-len", type=int_at_least(2), default=D.max_len, help="tokens scored per document (default: the pair's own setting, 512 for the bundled pair)")
    flag(parser, "device", default=D.device, help="cpu (default), cuda or auto")
    flag(parser, "seed", type=non_negative_int, default=D.seed, help="seed for the corpus sample and the random baseline")
    flag(parser, "no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from scalingfilter.stages.demo import run_demo

    cfg = DemoConfig(output_dir=args.output_dir, pair=args.pair, docs=args.docs, keep=args.keep, max_len=args.max_len,
                     device=args.device, seed=args.seed, progress=not args.no_progress)
    result = run_demo(cfg, say=lambda m: print(m, flush=True))
    stats, rstats = result["stats"], result["random_stats"]
    print("\nkept by kind           top-k    random")
    for kind, row in stats["groups"]["values"].items():
        r = rstats["groups"]["values"][kind]
        if row["kept_fraction"] is None:
            continue
        print(f"  {kind:<18} {row['kept_fraction']:>7.0%} {r['kept_fraction']:>9.0%}   ({row['documents']} documents)")
    if result["warning"]:
        print("\n(random models: the top-k column is as arbitrary as the random one)")
    print(f"\ndone in {result['seconds']:.0f} s")
    print(f"report:          {result['report']}")
    print(f"random baseline: {result['random_report']}")
    print(f"kept documents:  {result['selected']} (manifest: selection.json)")
    return 0
