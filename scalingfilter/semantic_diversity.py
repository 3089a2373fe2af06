"""The reference's entry point, kept for its users:

    python -m scalingfilter.semantic_diversity --input_dir IN --output_dir OUT [--column text]
        [--model_name NAME_OR_DIR] [--batch_size N] [--load_from_cache]

The flags, defaults and output are those of `scalingfilter diversity` (scalingfilter/cli/diversity.py):
every flag also takes the dash spelling (--input-dir), and --groups, --group-size, --seed, --full, --q,
--kernel, ... work here too. As in the reference, the scores are printed and written to OUT/results.txt.
"""

from __future__ import annotations

import argparse
import sys
import types

from scalingfilter.cli.app import run_command
from scalingfilter.cli.diversity import add_arguments, run

PROG = "semantic_diversity"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m scalingfilter.{PROG}", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(f"Input dir: {args.input_dir}", file=sys.stderr)
    return run_command(PROG, run, args)


class _EntryPointAndFunction(types.ModuleType):
    """`scalingfilter.semantic_diversity` names both this module (the reference's entry point) and the public
    function (`scalingfilter.semantic_diversity(texts)`); once this module is imported, the package attribute
    is the module, so calling the module calls the function: either way the name works as documented."""

    def __call__(self, *args, **kwargs):
        from scalingfilter.stages.diversity import semantic_diversity

        return semantic_diversity(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _EntryPointAndFunction
