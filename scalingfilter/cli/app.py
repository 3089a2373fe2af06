"""The `scalingfilter` console script: one subcommand per stage, each a thin layer over the API.

Each subcommand lives in `scalingfilter/cli/<name>.py` and defines
`add_arguments(parser)` and `run(args) -> int` (the exit status). Modules are imported only when
their subcommand runs, so `scalingfilter --help` stays fast and one stage's optional dependency
never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "score": "Give every document of a corpus its quality factor (small/large model perplexity ratio).",
    "train": "Train a small/large meta-model pair (and its tokenizer) on a corpus.",
    "evaluate": "AUROC and pair win rate of the quality factor and baselines against labels.",
    "select": "Keep the best fraction of a scored corpus (top-k, perplexity gating, random, temperature).",
    "report": "An HTML report with figures of a scored (and selected) corpus.",
    "diversity": "Semantic diversity (Vendi score of sentence embeddings) of a corpus.",
    "demo": "Score, select and report a demo corpus built from text the installation brings.",
    "slurm": "Print an sbatch script that runs score on a Slurm cluster (job array with torchrun, or a Ray cluster).",
    "distill": "Train a fastText classifier that imitates the quality factor (to filter a whole pool on CPUs).",
    "classify": "Add qf_distilled (P(keep) of a distilled fastText model) to every document of a corpus.",
    "ablate": "Train small proxy models on each filter's selection and compare them on public benchmarks (random, quality factor, ...).",
    "threshold": "A fixed score threshold for a streaming filter (keep --keep of the pool), estimated from a scored sample.",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalingfilter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(f"scalingfilter.cli.{name}").add_arguments(p)
            from scalingfilter.io.locations import add_storage_option_flag

            add_storage_option_flag(p)  # every path argument may be a URL (s3://, gs://, ...)
    return parser


# Libraries whose warnings carry tracebacks of retried network calls.
QUIET_LOGGERS = ("gcsfs", "s3fs", "fsspec", "aiobotocore", "botocore", "urllib3", "huggingface_hub", "filelock")


def run_command(prog: str, run, args: argparse.Namespace) -> int:
    """Run one command: a `ScalingFilterError` (a problem the user can fix) is one line on stderr and its
    exit status; Ctrl-C is one line and 130; a full disk or an unwritable path is one line and 2.
    Anything else is a bug and keeps its traceback."""
    import logging

    from scalingfilter.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ScalingFilterError, Terminated
    from scalingfilter.io.storage import storage_error

    for name in QUIET_LOGGERS:  # they log tracebacks of retried calls (even at ERROR); our one-line errors say what failed
        logging.getLogger(name).setLevel(logging.CRITICAL)

    try:
        from scalingfilter.io.locations import apply_storage_options

        apply_storage_options(args)
        return int(run(args) or 0)
    except ScalingFilterError as exc:
        print(f"{prog}: error: {exc.cli_message()}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated) or Terminated.received:
            print(f"\n{prog}: stopped (SIGTERM); rerun the same command to continue (finished work is kept)", file=sys.stderr)
            return EXIT_TERMINATED
        print(f"\n{prog}: interrupted; rerun the same command to continue (finished work is kept)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        err = storage_error(exc)
        if err is None:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    module = importlib.import_module(f"scalingfilter.cli.{args.command}")
    return run_command(f"scalingfilter {args.command}", module.run, args)


if __name__ == "__main__":
    sys.exit(main())
