"""`scalingfilter report`: an HTML report with figures of a scored (and optionally selected) corpus.

Errors (an unscored directory, an unfinished selection, a selection of another corpus) are
ScalingFilterErrors raised by the report; `scalingfilter.cli.app` prints them as one line (exit 2).
"""

from __future__ import annotations

import argparse

from scalingfilter.cli.flags import flag, int_at_least, non_negative_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flag(parser, "input-dir", required=True, help="a `scalingfilter score` output directory")
    flag(parser, "output-dir", required=True, help="where report.html, the PNG figures and stats.json go")
    flag(parser, "selected", default=None, help="a finished `scalingfilter select` output directory made from --input-dir: colour kept and dropped documents")
    flag(parser, "text-field", default="text", help="the field holding the text (default text; raw_content is read when text is absent)")
    flag(parser, "group-field", default=None, help="a record field to break the quality factor down by (e.g. source): kept rate per group beside a random selection's, and examples of each")
    flag(parser, "examples", type=non_negative_int, default=6, help="documents shown at the top, the bottom and around the threshold (default 6; 0 shows none)")
    flag(parser, "group-examples", type=non_negative_int, default=3, help="with --group-field: kept and dropped documents shown per group (default 3 each; 0 shows none)")
    flag(parser, "snippet-chars", type=int_at_least(1), default=400, help="characters shown of each document (default 400)")
    flag(parser, "max-points", type=int_at_least(100), default=20000, help="documents drawn in each scatter plot, a seeded sample (default 20000)")


def run(args: argparse.Namespace) -> int:
    from scalingfilter.stages.report import build_report

    stats = build_report(args.input_dir, args.output_dir, selected_dir=args.selected, text_field=args.text_field,
                         group_field=args.group_field, n_examples=args.examples, snippet_chars=args.snippet_chars,
                         max_points=args.max_points, group_examples=args.group_examples)
    c = stats["counts"]
    print(f"{c['documents']:,} documents ({c['scored']:,} scored, {c['unscored']:,} unscored); {len(stats['figures'])} figures")
    print(f"report: {args.output_dir}/report.html")
    return 0
