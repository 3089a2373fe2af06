"""`scalingfilter report`: an HTML report with figures of a scored (and optionally selected) corpus."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-dir", "--input_dir", required=True, help="a `scalingfilter score` output directory")
    parser.add_argument("--output-dir", "--output_dir", required=True, help="where report.html, the PNG figures and stats.json go")
    parser.add_argument("--selected", default=None, help="a `scalingfilter select` output directory made from --input-dir: colour kept and dropped documents")
    parser.add_argument("--text-field", default="text", help="the field holding the text (default text; raw_content is read when text is absent)")
    parser.add_argument("--group-field", default=None, help="a record field to break the quality factor down by (e.g. source)")
    parser.add_argument("--examples", type=int, default=6, help="documents shown at the top, the bottom and around the threshold (default 6)")
    parser.add_argument("--snippet-chars", type=int, default=400, help="characters shown of each document (default 400)")


def run(args: argparse.Namespace) -> int:
    from ..documents import InputError
    from ..report import build_report

    try:
        stats = build_report(args.input_dir, args.output_dir, selected_dir=args.selected, text_field=args.text_field,
                             group_field=args.group_field, n_examples=args.examples, snippet_chars=args.snippet_chars)
    except InputError as exc:
        print(f"scalingfilter report: error: {exc}", file=sys.stderr)
        return 2
    c = stats["counts"]
    print(f"{c['documents']:,} documents ({c['scored']:,} scored, {c['unscored']:,} unscored); {len(stats['figures'])} figures")
    print(f"report: {args.output_dir}/report.html")
    return 0
