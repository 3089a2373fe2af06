"""The reference implementation's entry point, kept for its users (the command is `scalingfilter score`):

  python -m torch.distributed.launch --nproc_per_node=N scalingfilter/quality_factor.py --input_dir IN --output_dir OUT
  torchrun --nproc_per_node=N scalingfilter/quality_factor.py --input_dir IN --output_dir OUT
  python -m scalingfilter.quality_factor --input_dir IN --output_dir OUT

Flags, defaults and behaviour are those of `scalingfilter score` (scalingfilter/cli/score.py).
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    # Run as a script (scalingfilter/quality_factor.py): import the package, not its modules as top-level names.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

from scalingfilter.cli.score import add_arguments, run  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    from scalingfilter.cli.app import run_command

    parser = argparse.ArgumentParser(prog="quality_factor", description="Quality factors of a corpus (ScalingFilter).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command("quality_factor", lambda a: run(a, prog="quality_factor"), args)


if __name__ == "__main__":
    sys.exit(main())
