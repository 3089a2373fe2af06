"""`scalingfilter classify`: add `qf_distilled` (P(keep) of a `distill` model) to every record of a corpus.

It runs on the score job engine, so it promises what `score` promises: streaming, units, output by
rename, done markers, restart after kill -9, rejects, the same exit statuses, torchrun / several
nodes, or the Ray engine (`--engine ray`). Each process predicts with WORKERS worker processes (default: every core it may use, shared
among torchrun's processes on the node). Needs `pip install 'scalingfilter[distill]'`.
"""

from __future__ import annotations

import argparse
import os

from scalingfilter.cli import flags
from scalingfilter.cli.score import ray_retry_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from scalingfilter.stages.score import ScoreConfig

    d = ScoreConfig("", "")
    flags.flag(parser, "input-dir", required=True, help="directory of .jsonl/.jsonl.gz/.json.gz/.jsonl.zst/.parquet files, read recursively")
    flags.flag(parser, "output-dir", required=True, help="where the classified files go, mirroring the input's paths and formats")
    flags.flag(parser, "model", required=True, help="a `scalingfilter distill` output directory (model.bin and card.json)")
    flags.flag(parser, "text-field", default=d.text_field, help="field holding the text (RedPajama's raw_content is read when 'text' is absent)")
    flags.flag(parser, "workers", type=flags.positive_int, default=None,
               help="local engine: prediction processes per job process (default: every core this process may use, divided "
                    "among torchrun's local processes); --engine ray: Ray workers (default: one per CPU of the cluster)")
    flags.flag(parser, "engine", choices=("local", "ray"), default="local",
               help="local (default: this process, or torchrun's processes) or ray (a Ray cluster: pip install 'scalingfilter[ray]')")
    flags.flag(parser, "ray-address", default=None, help="--engine ray: 'auto' or HOST:PORT of a running cluster (default: start a local Ray instance)")
    ray_retry_flags(parser)
    flags.flag(parser, "nparts", type=flags.positive_int, default=d.nparts, help="split the sorted files into NPARTS contiguous parts (for several nodes)")
    flags.flag(parser, "rank-part-start", type=flags.non_negative_int, default=d.rank_part_start, help="first part this node takes")
    flags.flag(parser, "rank-nparts", type=flags.positive_int, default=d.rank_nparts, help="number of parts this node takes")
    flags.flag(parser, "unit-docs", type=flags.positive_int, default=d.unit_docs, help="records per work unit when a big file is split")
    flags.flag(parser, "split-bytes", type=flags.non_negative_int, default=d.split_bytes, help="JSONL files bigger than this (bytes on disk) are split into units of UNIT_DOCS records")
    flags.flag(parser, "file-ext", action="append", default=None, help="only read files ending so (repeatable); default: all supported formats")
    flags.flag(parser, "force-overwrite", action="store_true", help="discard earlier output and state in OUTPUT_DIR and classify again")
    flags.flag(parser, "strict", action="store_true", help="stop at the first bad record instead of rejecting it")
    flags.flag(parser, "no-progress", action="store_true", help="no progress bar")
    flags.flag(parser, "local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from scalingfilter.stages.distill import classify_spec
    from scalingfilter.errors import EXIT_OK
    from scalingfilter.stages.score import ScoreConfig, run_score
    from scalingfilter.cli.score import quiet_libraries, report_summary

    quiet_libraries()
    # under Ray, Ray's workers are the parallelism: each predicts in its own process
    spec = classify_spec(args.model, workers=1 if args.engine == "ray" else args.workers)
    cfg = ScoreConfig(args.input_dir, args.output_dir, text_field=args.text_field, nparts=args.nparts,
                      rank_part_start=args.rank_part_start, rank_nparts=args.rank_nparts, unit_docs=args.unit_docs,
                      split_bytes=args.split_bytes, file_ext=tuple(args.file_ext) if args.file_ext else None,
                      force_overwrite=args.force_overwrite, strict=args.strict, show_progress=not args.no_progress,
                      device="cpu", scorer=spec)
    ray = None
    if args.engine == "ray":
        from scalingfilter.jobs.engines.ray import RayOptions

        ray = RayOptions(address=args.ray_address, workers=args.workers, gpus_per_worker=0, cpus_per_worker=1,
                         max_unit_retries=args.max_unit_retries, unit_timeout=args.unit_timeout)
    summary = run_score(cfg, args.engine, ray)
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK  # rank 0 speaks for the job
    return report_summary(summary, "scalingfilter classify")
