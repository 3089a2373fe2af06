"""`scalingfilter score`: give every document of a corpus its quality factor.

The same flags and behaviour as the reference's quality_factor.py (which `scalingfilter/quality_factor.py`
keeps as an entry point). Defaults come from `stages.score.ScoreConfig`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields

from scalingfilter.cli.flags import flag, int_at_least, non_negative_float, non_negative_int, positive_int
from scalingfilter.errors import EXIT_ERROR, EXIT_OK, EXIT_REJECTED

ENGINES = ("local", "ray")


def _defaults() -> dict:
    from scalingfilter.stages.score import ScoreConfig

    return {f.name: f.default for f in fields(ScoreConfig) if f.name not in ("input_dir", "output_dir")}


def ray_retry_flags(parser: argparse.ArgumentParser) -> None:
    """--max-unit-retries and --unit-timeout, shared with classify (which runs on the same engine)."""
    from scalingfilter.jobs.engines.ray import MIN_UNIT_TIMEOUT_S, RayOptions  # imports no ray

    d = RayOptions()
    flag(parser, "max-unit-retries", type=non_negative_int, default=d.max_unit_retries,
         help=f"--engine ray: times a unit whose worker died or hung is retried elsewhere (default {d.max_unit_retries})")
    flag(parser, "unit-timeout", type=non_negative_float, default=d.unit_timeout, metavar="SECONDS",
         help="--engine ray: a worker whose unit writes no document for SECONDS is killed and the unit retried elsewhere "
              f"(a hang); 0: off (default {d.unit_timeout:g}; at least {MIN_UNIT_TIMEOUT_S:g} when on)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _defaults()
    flag(parser, "input-dir", required=True, help="directory of .jsonl/.jsonl.gz/.json.gz/.jsonl.zst/.parquet files, read recursively")
    flag(parser, "output-dir", required=True, help="where scored files go, mirroring the input's paths and formats")
    flag(parser, "pair", default=d["pair"], help="'gpt2' (default: gpt2 / gpt2-large), 'bundled', or a directory with small/ and large/")
    flag(parser, "small-model", default=None, help="any Hugging Face causal LM id or local directory (overrides the pair's small model)")
    flag(parser, "large-model", default=None, help="any Hugging Face causal LM id or local directory (overrides the pair's large model)")
    flag(parser, "text-field", default=d["text_field"], help="field holding the text (RedPajama's raw_content is read when 'text' is absent)")
    flag(parser, "max-len", type=int_at_least(2), default=None,
         help="score the first MAX_LEN tokens of each document (head truncation); default: what the pair directory's "
              "scoring.json says (the bundled pair: 512), else min(1024, the models' context)")
    flag(parser, "max-tokens-per-batch", type=positive_int, default=None, help="token budget of one batch (rows x padded length); default 32768 on CUDA, 16384 on CPU")
    flag(parser, "packing", choices=["auto", "on", "off"], default=d["packing"], help="documents concatenated into rows, attention confined to each (same scores); auto: on CUDA where the models support it")
    flag(parser, "batch-size", type=positive_int, default=None, help="reference flag: sets the token budget to BATCH_SIZE x MAX_LEN")
    flag(parser, "device", default=d["device"], help="auto | cpu | cuda | cuda:N")
    flag(parser, "dtype", default=d["dtype"], choices=["auto", "float32", "bfloat16", "float16"], help="auto: bfloat16 on CUDA, float32 on CPU")
    flag(parser, "prepend-bos", action="store_true", default=None,
         help="prepend the BOS (or EOS) token so that the first token is scored too (default: the pair's scoring.json, else off)")
    flag(parser, "no-prepend-bos", action="store_false", dest="prepend_bos", help="do not prepend BOS even if the pair's scoring.json asks for it")
    flag(parser, "nparts", type=positive_int, default=d["nparts"], help="split the sorted files into NPARTS contiguous parts (for several nodes)")
    flag(parser, "rank-part-start", type=non_negative_int, default=d["rank_part_start"], help="first part this node takes")
    flag(parser, "rank-nparts", type=positive_int, default=d["rank_nparts"], help="number of parts this node takes (stronger nodes can take more)")
    flag(parser, "unit-docs", type=positive_int, default=d["unit_docs"], help="records per work unit when a big file is split")
    flag(parser, "split-bytes", type=non_negative_int, default=d["split_bytes"], help="JSONL files bigger than this (bytes on disk) are split into units of UNIT_DOCS records")
    flag(parser, "file-ext", action="append", default=None, help="only read files ending so (repeatable); default: all supported formats")
    flag(parser, "force-overwrite", action="store_true", help="discard earlier output and state in OUTPUT_DIR and rescore")
    flag(parser, "strict", action="store_true", help="stop at the first bad record instead of rejecting it")
    flag(parser, "no-progress", action="store_true", help="no progress bar")
    flag(parser, "engine", choices=ENGINES, default="local",
         help="local (default: this process, or torchrun's processes) or ray (a Ray cluster: pip install 'scalingfilter[ray]')")
    flag(parser, "ray-address", default=None, help="--engine ray: 'auto' or HOST:PORT of a running cluster (default: start a local Ray instance)")
    flag(parser, "workers", type=positive_int, default=None, help="--engine ray: number of scoring workers (default: one per GPU, else per 1 CPU of the cluster)")
    flag(parser, "gpus-per-worker", type=non_negative_float, default=None,
         help="--engine ray: GPUs per worker (default 1 where the cluster has GPUs, else 0)")
    flag(parser, "cpus-per-worker", type=positive_int, default=None, help="--engine ray: CPUs per worker (default 1)")
    ray_retry_flags(parser)
    # torch.distributed.launch passes --local-rank / --local_rank; the rank comes from the environment
    flag(parser, "local-rank", type=int, default=None, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace):
    from scalingfilter.stages.score import ScoreConfig

    budget = args.max_tokens_per_batch
    if budget is None and args.batch_size:
        budget = args.batch_size * (args.max_len or 1024)
    return ScoreConfig(
        args.input_dir, args.output_dir, pair=args.pair, small_model=args.small_model, large_model=args.large_model,
        text_field=args.text_field, max_len=args.max_len, max_tokens_per_batch=budget, prepend_bos=args.prepend_bos,
        device=args.device, dtype=args.dtype, nparts=args.nparts, rank_part_start=args.rank_part_start,
        rank_nparts=args.rank_nparts, unit_docs=args.unit_docs, split_bytes=args.split_bytes,
        file_ext=tuple(args.file_ext) if args.file_ext else None, force_overwrite=args.force_overwrite,
        strict=args.strict, show_progress=not args.no_progress, packing=getattr(args, "packing", "auto"),
    )


def quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)  # network and storage libraries: cli.QUIET_LOGGERS
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # one progress bar (ours), not one per weight file


def run(args: argparse.Namespace, prog: str = "scalingfilter score") -> int:
    quiet_libraries()
    cfg = config_from_args(args)
    from scalingfilter.stages.score import run_score

    ray = None
    if args.engine == "ray":
        from scalingfilter.jobs.engines.ray import RayOptions

        ray = RayOptions(address=args.ray_address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                         cpus_per_worker=args.cpus_per_worker, max_unit_retries=args.max_unit_retries, unit_timeout=args.unit_timeout)
    summary = run_score(cfg, args.engine, ray)
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK  # rank 0 speaks for the job; a launcher would kill the others at a nonzero status
    return report_summary(summary, prog)


def report_summary(summary: dict, prog: str) -> int:
    """Print the summary; the exit status says whether anything was rejected or failed."""
    print(json.dumps({k: v for k, v in summary.items() if k not in ("settings", "skipped_examples")}, indent=1))
    status = EXIT_OK
    if summary.get("failed_units"):
        print(f"{prog}: error: {len(summary['failed_units'])} unit(s) failed after retries: {', '.join(summary['failed_units'][:5])}; "
              "rerun the same command to retry them", file=sys.stderr)
        return EXIT_ERROR
    if summary["rejected"]:
        print(f"{prog}: {summary['rejected']} record(s) rejected; see {summary['rejects_dir']}", file=sys.stderr)
        status = EXIT_REJECTED
    return status
