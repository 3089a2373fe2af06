"""`scalingfilter select`: keep the best fraction of a scored corpus (or a baseline's sample of it)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..selection import BY, METHODS, UNSCORED_POLICIES

    parser.add_argument("--input-dir", "--input_dir", required=True, help="a `scalingfilter score` output directory")
    parser.add_argument("--output-dir", "--output_dir", required=True, help="where the kept documents go (same relative paths and formats)")
    parser.add_argument("--keep", type=float, default=0.7, help="fraction to keep (default 0.7, as the paper)")
    parser.add_argument("--method", choices=METHODS, default="top-k",
                        help="top-k: highest quality factor (ScalingFilter, default); perplexity-gating: large-model "
                             "perplexity between the (1-keep)/2 and (1+keep)/2 quantiles; random: seeded uniform sample; "
                             "temperature: sample with probability proportional to exp(log quality factor / T)")
    parser.add_argument("--temperature", type=float, default=1.0, help="T for --method temperature (T -> 0 is top-k; default 1)")
    parser.add_argument("--by", choices=BY, default="documents", help="keep a fraction of the documents (default) or of the tokens")
    parser.add_argument("--seed", type=int, default=0, help="seed for random and temperature (default 0)")
    parser.add_argument("--unscored", choices=UNSCORED_POLICIES, default="exclude",
                        help="documents without a score (too short, unreadable): exclude (default) or keep them; "
                             "either way they are counted and listed in OUT/.scalingfilter/unscored.jsonl")
    parser.add_argument("--drop-score-fields", action="store_true", help="remove the fields `score` added from the output records")
    parser.add_argument("--force-overwrite", "--force_overwrite", action="store_true", help="replace an earlier selection in --output-dir")


def run(args: argparse.Namespace) -> int:
    from ..documents import InputError
    from ..selection import SelectionError, format_manifest, select_corpus

    try:
        manifest = select_corpus(
            args.input_dir, args.output_dir, keep=args.keep, method=args.method, by=args.by, seed=args.seed,
            temperature=args.temperature, unscored=args.unscored, drop_score_fields=args.drop_score_fields,
            force_overwrite=args.force_overwrite,
        )
    except (InputError, SelectionError) as exc:
        print(f"scalingfilter select: error: {exc}", file=sys.stderr)
        return 2
    print(format_manifest(manifest))
    print(f"manifest: {args.output_dir}/selection.json")
    return 0
