"""`scalingfilter train`: train a tokenizer and a small/large meta-model pair on a corpus.

Every flag has both spellings (--seq-len / --seq_len); numbers are range-checked while parsing; the
defaults are TrainConfig's. Errors are raised, not printed: `scalingfilter.cli.app` prints them as one line.
"""

from __future__ import annotations

import argparse
import math
import sys

from scalingfilter.cli.flags import flag, int_at_least, non_negative_int, positive_float, positive_int


def token_count(low: int):
    """A count of tokens, written as an integer or in float notation (8e6), at least `low`."""

    def check(text: str) -> int:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or value != int(value):
            raise argparse.ArgumentTypeError(f"must be a whole number of tokens, at least {low} (got {text})")
        return int(value)

    check.__name__ = "token count"
    return check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from scalingfilter.models.tokenizer import MIN_VOCAB_SIZE
    from scalingfilter.models.gpt import SIZES
    from scalingfilter.stages.train import TrainConfig as C

    flag(parser, "input-dir", required=True, help="corpus directory (.jsonl[.gz|.zst], .json.gz, .parquet)")
    flag(parser, "output-dir", required=True,
         help="writes small/, large/ (HF model dirs), scoring.json, train_log.json, checkpoint.pt")
    flag(parser, "sizes", default=C.sizes,
         help=f"{' | '.join(SIZES)} | LxDxH,LxDxH (layers x width x heads of small,large); default {C.sizes}")
    flag(parser, "tokenizer", default=C.tokenizer, help="'new' (train byte-level BPE on the corpus) or a hub id / directory")
    flag(parser, "vocab-size", type=int_at_least(MIN_VOCAB_SIZE), default=C.vocab_size,
         help=f"for a new tokenizer; at least {MIN_VOCAB_SIZE} = 256 bytes + the separator (default %(default)s)")
    flag(parser, "seq-len", type=int_at_least(2), default=C.seq_len,
         help="training context, also the models' positions (default %(default)s)")
    flag(parser, "batch-size", type=positive_int, default=C.batch_size, help="sequences per step (default %(default)s)")
    flag(parser, "tokens", type=token_count(1), default=C.tokens, help="training tokens per model, e.g. 8e6 (default: one epoch)")
    flag(parser, "lr", type=positive_float, default=C.lr, help="peak learning rate (default %(default)s)")
    flag(parser, "device", default=C.device, help="auto | cpu | cuda[:N] (default %(default)s)")
    flag(parser, "precision", default=C.precision, choices=["auto", "bf16", "fp32"],
         help="auto: bf16 autocast on CUDA and on CPUs with bf16 instructions")
    flag(parser, "threads", type=positive_int, default=C.threads, help="CPU threads for torch (default: torch's choice)")
    flag(parser, "compile", action="store_true", help="torch.compile the models (minutes to start, then faster steps)")
    flag(parser, "seed", type=non_negative_int, default=C.seed, help="default %(default)s")
    flag(parser, "text-field", default=C.text_field, help="default %(default)s")
    flag(parser, "checkpoint-every", type=positive_int, default=C.checkpoint_every, help="steps (default %(default)s)")
    flag(parser, "save-dtype", default=C.save_dtype, choices=["float32", "float16", "bfloat16"],
         help="storage type of the saved weights (they load as float32)")
    flag(parser, "resume", action="store_true",
         help="continue the run in --output-dir from its checkpoint (same settings, same corpus)")
    flag(parser, "init-from", default=C.init_from,
         help="start both models from an earlier pair's weights (DIR with small/ and large/): a new warm-up + cosine cycle")
    flag(parser, "skip-tokens", type=token_count(0), default=C.skip_tokens,
         help="start this many tokens into the data order (e.g. past what --init-from's pair saw)")
    flag(parser, "no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from scalingfilter.stages.train import TrainConfig, train_pair

    cfg = TrainConfig(
        input_dir=args.input_dir, output_dir=args.output_dir, sizes=args.sizes, tokenizer=args.tokenizer,
        vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size, tokens=args.tokens, lr=args.lr,
        device=args.device, precision=args.precision, threads=args.threads, seed=args.seed, compile=args.compile,
        text_field=args.text_field, checkpoint_every=args.checkpoint_every, save_dtype=args.save_dtype,
        resume=args.resume, init_from=args.init_from, skip_tokens=args.skip_tokens, progress=not args.no_progress,
    )
    try:
        result = train_pair(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except KeyboardInterrupt as exc:
        # not the generic "rerun the same command": a rerun without --resume refuses an output directory that
        # holds a run (or, before the first checkpoint, retokenizes); --resume continues from the last checkpoint
        from scalingfilter.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated

        terminated = isinstance(exc, Terminated) or Terminated.received
        print(f"\nscalingfilter train: {'stopped (SIGTERM)' if terminated else 'interrupted'}; rerun the same command "
              f"with --resume to continue from the last checkpoint (written every --checkpoint-every steps)",
              file=sys.stderr, flush=True)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    p, h = result["parameters"], result["heldout_loss"]
    print(f"wrote {args.output_dir}/small ({p['small']:,} params) and {args.output_dir}/large ({p['large']:,} params); "
          f"{result['tokens_seen']:,} tokens each; held-out loss small {h['small']:.4f} / large {h['large']:.4f}")
    return 0
