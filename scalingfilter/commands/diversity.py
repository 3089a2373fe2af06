"""`scalingfilter diversity`: semantic diversity (Vendi score of sentence embeddings) of a corpus."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from scalingfilter.diversity import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    from scalingfilter.diversity import main_from_args

    return main_from_args(args)
