"""`scalingfilter score`, and the reference implementation's entry point.

Both of these keep working, with the reference's flag names and defaults:
  python -m torch.distributed.launch --nproc_per_node=N scalingfilter/quality_factor.py --input_dir IN --output_dir OUT
  torchrun --nproc_per_node=N scalingfilter/quality_factor.py --input_dir IN --output_dir OUT
  python -m scalingfilter.quality_factor --input_dir IN --output_dir OUT
Every flag is accepted with dashes or underscores (--input-dir / --input_dir).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

if __package__ in (None, ""):
    # Run as a script (scalingfilter/quality_factor.py): import the package, not its modules as top-level names.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

EXIT_OK, EXIT_ERROR, EXIT_REJECTED = 0, 2, 3


def _flag(parser, name: str, **kw):
    """Add --a-b with its underscore spelling --a_b as an alias."""
    spellings = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
    parser.add_argument(*spellings, dest=name.replace("-", "_"), **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "input-dir", required=True, help="directory of .jsonl/.jsonl.gz/.json.gz/.jsonl.zst/.parquet files, read recursively")
    _flag(parser, "output-dir", required=True, help="where scored files go, mirroring the input's paths and formats")
    parser.add_argument("--pair", default=None, help="'gpt2' (default: gpt2 / gpt2-large), 'bundled', or a directory with small/ and large/")
    _flag(parser, "small-model", default=None, help="any Hugging Face causal LM id or local directory (overrides the pair's small model)")
    _flag(parser, "large-model", default=None, help="any Hugging Face causal LM id or local directory (overrides the pair's large model)")
    _flag(parser, "text-field", default="text", help="field holding the text (RedPajama's raw_content is read when 'text' is absent)")
    _flag(parser, "max-len", type=int, default=1024, help="score the first MAX_LEN tokens of each document (head truncation)")
    _flag(parser, "max-tokens-per-batch", type=int, default=None, help="token budget of one batch (rows x padded length); default 32768 on CUDA, 16384 on CPU")
    _flag(parser, "batch-size", type=int, default=None, help="reference flag: sets the token budget to BATCH_SIZE x MAX_LEN")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="auto: bfloat16 on CUDA, float32 on CPU")
    _flag(parser, "prepend-bos", action="store_true", help="prepend the BOS (or EOS) token so that the first token is scored too")
    parser.add_argument("--nparts", type=int, default=1, help="split the sorted files into NPARTS contiguous parts (for several nodes)")
    _flag(parser, "rank-part-start", type=int, default=0, help="first part this node takes")
    _flag(parser, "rank-nparts", type=int, default=1, help="number of parts this node takes (stronger nodes can take more)")
    _flag(parser, "unit-docs", type=int, default=100_000, help="records per work unit when a big file is split")
    _flag(parser, "split-bytes", type=int, default=64 << 20, help="JSONL files bigger than this (bytes on disk) are split into units of UNIT_DOCS records")
    _flag(parser, "file-ext", action="append", default=None, help="only read files ending so (repeatable); default: all supported formats")
    _flag(parser, "force-overwrite", action="store_true", help="discard earlier output and state in OUTPUT_DIR and rescore")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record instead of rejecting it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # torch.distributed.launch passes --local-rank / --local_rank; the rank comes from the environment
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from scalingfilter.documents import InputError
    from scalingfilter.models import ModelLoadError
    from scalingfilter.pipeline import ConfigMismatchError, RejectedRecordError, score_corpus
    from scalingfilter.sharding import ShardingError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar (ours), not one per weight file
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    budget = args.max_tokens_per_batch
    if budget is None and args.batch_size:
        budget = args.batch_size * args.max_len
    try:
        summary = score_corpus(
            args.input_dir, args.output_dir, pair=args.pair, small_model=args.small_model, large_model=args.large_model,
            text_field=args.text_field, max_len=args.max_len, max_tokens_per_batch=budget, prepend_bos=args.prepend_bos,
            device=args.device, dtype=args.dtype, nparts=args.nparts, rank_part_start=args.rank_part_start,
            rank_nparts=args.rank_nparts, unit_docs=args.unit_docs, split_bytes=args.split_bytes, file_ext=tuple(args.file_ext) if args.file_ext else None,
            force_overwrite=args.force_overwrite, strict=args.strict, show_progress=not args.no_progress,
        )
    except (InputError, ModelLoadError, ShardingError, ConfigMismatchError, RejectedRecordError, ValueError) as exc:
        print(f"scalingfilter score: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK  # rank 0 speaks for the job; a launcher would kill the others at a nonzero status
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=1))
    if summary["rejected"]:
        print(f"scalingfilter score: {summary['rejected']} record(s) rejected; see {summary['rejects_dir']}", file=sys.stderr)
    return EXIT_REJECTED if summary["rejected"] else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quality_factor", description="Quality factors of a corpus (ScalingFilter).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
