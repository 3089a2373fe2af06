"""The reference's entry point, kept for its users:

    python -m scalingfilter.semantic_diversity --input_dir IN --output_dir OUT [--column text]
        [--model_name NAME_OR_DIR] [--batch_size N] [--load_from_cache]

Every flag also takes the dash spelling (--input-dir), and the options of `scalingfilter diversity`
(--groups, --group-size, --seed, --full, --q, --kernel, ...) work here too. As in the reference, the
scores are printed and written to OUT/results.txt; results.json adds the settings. Unlike the
reference it runs on CPU, on any number of documents, with a seeded shuffle and float64 arithmetic.
"""

from __future__ import annotations

import argparse
import sys

from .diversity import add_arguments, main_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scalingfilter.semantic_diversity", description=__doc__.splitlines()[0])
    add_arguments(parser, reference_spelling=True)
    args = parser.parse_args(argv)
    print(f"Input dir: {args.input_dir}", file=sys.stderr)
    return main_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
