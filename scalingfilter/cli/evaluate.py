"""`scalingfilter evaluate`: AUROC and pair win rate of the quality factor and the baselines against labels.

Every flag has both spellings (--label-field / --label_field). Errors are raised, not printed:
`scalingfilter.cli.app` prints them as one line (exit status 2).
"""

from __future__ import annotations

import argparse

from scalingfilter.cli.flags import flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flag(parser, "input-dir", required=True, help="a scored corpus (the output directory of `scalingfilter score`)")
    flag(parser, "label-field", default="label", help="binary label; the higher value is the positive class (default %(default)s)")
    flag(parser, "pair-field", default="pair",
         help="documents sharing this field's value are compared with each other (pair win rate); "
              "ignored if absent (default %(default)s)")
    flag(parser, "text-field", default="text", help="for the length baseline (default %(default)s)")
    flag(parser, "json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from scalingfilter.stages.evaluate import evaluate_dir, format_table

    result = evaluate_dir(args.input_dir, args.label_field, args.pair_field or None, args.text_field)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"{result['input_dir']}: {result['labelled']:,} labelled documents of {result['documents']:,}; "
          f"positive class {args.label_field} = {result['positive_label']!r}"
          + (f"; groups by {result['pair_field']!r}" if result["pair_field"] else ""))
    if result["unlabelled"]:
        print("left out: " + ", ".join(f"{n:,} {why}" for why, n in result["unlabelled"].items()))
    print(format_table(result))
    return 0
